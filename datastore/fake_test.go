package datastore_test

import (
	"testing"

	"twill.dev/twill/datastore"
	"twill.dev/twill/datastore/storetest"
)

func TestFakeConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) datastore.Store {
		f := datastore.NewFake()
		t.Cleanup(func() { f.Close() })
		return f
	})
}
