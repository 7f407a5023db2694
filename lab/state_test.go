package lab

import (
	"encoding/json"
	"slices"
	"testing"

	"twill.dev/twill/datastore/open"
)

// TestStateStoreConfig: the state says how to open the lab's datastore,
// and state files from before the Datastore field ran etcd.
func TestStateStoreConfig(t *testing.T) {
	var old State
	if err := json.Unmarshal([]byte(`{"version":1,"etcd":"http://127.0.0.1:40001"}`), &old); err != nil {
		t.Fatal(err)
	}
	cfg, ok := old.StoreConfig()
	if !ok || cfg.Type != open.TypeEtcd || !slices.Equal(cfg.Etcd.Endpoints, []string{"http://127.0.0.1:40001"}) {
		t.Errorf("old state: StoreConfig = %+v, %t", cfg, ok)
	}
	if got := old.DatastoreDescription(); got != "etcd at http://127.0.0.1:40001" {
		t.Errorf("old state: DatastoreDescription = %q", got)
	}

	st := State{Datastore: open.TypeEtcd}
	if _, ok := st.StoreConfig(); ok {
		t.Error("a lab whose etcd has not started has a store config")
	}
	if got := st.DatastoreDescription(); got != "etcd (not started)" {
		t.Errorf("DatastoreDescription = %q", got)
	}

	kube := State{Datastore: open.TypeKubernetes, Kubeconfig: "/run/twill-lab/kubeconfig"}
	cfg, ok = kube.StoreConfig()
	if !ok || cfg.Type != open.TypeKubernetes || cfg.Kubeconfig != "/run/twill-lab/kubeconfig" {
		t.Errorf("kubernetes lab: StoreConfig = %+v, %t", cfg, ok)
	}

	b, err := json.Marshal(State{Version: stateVersion, Datastore: open.TypeEtcd, Etcd: "http://x"})
	if err != nil {
		t.Fatal(err)
	}
	var back State
	if err := json.Unmarshal(b, &back); err != nil || back.Datastore != open.TypeEtcd || back.DatastoreType() != open.TypeEtcd {
		t.Errorf("round trip: %s -> %+v, %v", b, back, err)
	}
}
