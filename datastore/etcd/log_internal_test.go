package etcd

import (
	"bytes"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestSlogCore(t *testing.T) {
	var buf bytes.Buffer
	h := slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})
	closing := new(atomic.Bool)
	quiet := zap.New(&slogCore{h: h, level: zapcore.ErrorLevel, closing: closing}).With(zap.String("member", "m1"))

	quiet.Info("routine")
	quiet.Warn("odd")
	if buf.Len() != 0 {
		t.Fatalf("info and warn records passed the error level: %s", buf.String())
	}
	quiet.Error("disk full", zap.Int("free", 0))
	got := buf.String()
	for _, want := range []string{"level=ERROR", `msg="disk full"`, "component=etcd", "free=0", "member=m1"} {
		if !strings.Contains(got, want) {
			t.Errorf("error record %q lacks %q", got, want)
		}
	}
	buf.Reset()
	quiet.Error(benignStorageVersionMsg)
	if buf.Len() != 0 {
		t.Errorf("benign bootstrap error was not demoted below error: %s", buf.String())
	}
	closing.Store(true)
	quiet.Error("accept: use of closed network connection")
	if buf.Len() != 0 {
		t.Errorf("error while closing was not demoted: %s", buf.String())
	}

	verbose := zap.New(&slogCore{h: h, level: zapcore.InfoLevel, closing: new(atomic.Bool)})
	verbose.Info("ready to serve")
	verbose.Error(benignStorageVersionMsg)
	got = buf.String()
	if !strings.Contains(got, `level=INFO msg="ready to serve"`) || !strings.Contains(got, "level=WARN msg=\""+benignStorageVersionMsg) {
		t.Errorf("verbose core output = %q; want the info record and the demoted warning", got)
	}
}
