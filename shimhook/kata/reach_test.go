package kata

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/namespaces"
	cdshim "github.com/containerd/containerd/runtime/v2/shim"

	containerdshim "github.com/kata-containers/kata-containers/src/runtime/pkg/containerd-shim-v2"
	"github.com/kata-containers/kata-containers/src/runtime/pkg/oci"
	vc "github.com/kata-containers/kata-containers/src/runtime/virtcontainers"
)

type nopPublisher struct{}

func (nopPublisher) Publish(context.Context, string, events.Event) error { return nil }
func (nopPublisher) Close() error                                        { return nil }

// kataService returns a real Kata shim service, as containerd's shim.Run
// makes it.
func kataService(t *testing.T) cdshim.Shim {
	t.Helper()
	ctx := namespaces.WithNamespace(context.Background(), "moby")
	ctx = context.WithValue(ctx, cdshim.OptsKey{}, cdshim.Opts{})
	inner, err := containerdshim.New(ctx, sbID, nopPublisher{}, func() {})
	if err != nil {
		t.Fatalf("Kata's containerdshim.New: %v", err)
	}
	return inner
}

// TestReachKataService is the loud failure: if Kata's shim service no longer
// keeps the sandbox and its runtime configuration where the wrapper reads
// them, this fails naming the Kata version the wrapper was verified against.
func TestReachKataService(t *testing.T) {
	inner := kataService(t)
	sb, cfg, err := reachSandbox(inner)
	if err != nil {
		t.Fatalf("KATA INTERNALS CHANGED: the wrapper cannot reach the sandbox of this Kata's shim "+
			"(verified against Kata %s): %v", VerifiedKata, err)
	}
	if sb != nil || cfg != nil {
		t.Fatalf("a fresh service already has a sandbox %v / config %v", sb, cfg)
	}

	// What Kata's Create stores is what the wrapper reads back.
	want := newFakeKata(sbID)
	wantCfg := &oci.RuntimeConfig{HypervisorType: vc.QemuHypervisor, DisableNewNetNs: true}
	setField(t, inner, fieldSandbox, vc.VCSandbox(want))
	setField(t, inner, fieldConfig, wantCfg)
	sb, cfg, err = reachSandbox(inner)
	if err != nil || sb != vc.VCSandbox(want) || cfg != wantCfg {
		t.Fatalf("KATA INTERNALS CHANGED (verified against Kata %s): read back %v %v %v", VerifiedKata, sb, cfg, err)
	}
	// And the wrapped service is Kata's, untouched, for every other RPC.
	s := Wrap(context.Background(), sbID, inner)
	if s.Shim != inner {
		t.Fatal("Wrap does not embed Kata's service")
	}
}

func TestReachFailsLoudly(t *testing.T) {
	type notKata struct{ sandbox string }
	type noConfig struct{ sandbox vc.VCSandbox }
	for name, inner := range map[string]any{
		"not a pointer":           struct{}{},
		"nil":                     nil,
		"field of another type":   &notKata{},
		"second field missing":    &noConfig{},
		"pointer to a non-struct": new(int),
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := reachSandbox(inner)
			if !errors.Is(err, ErrUnreachable) {
				t.Fatalf("err = %v, want ErrUnreachable", err)
			}
			for _, want := range []string{VerifiedKata, "service.sandbox", "docs/kata.md"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

// setField writes an unexported field: test only (the wrapper never writes).
func setField(t *testing.T, inner any, name string, v any) {
	t.Helper()
	f := reflect.ValueOf(inner).Elem().FieldByName(name)
	if !f.IsValid() {
		t.Fatalf("KATA INTERNALS CHANGED: no field %q (verified against Kata %s)", name, VerifiedKata)
	}
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Set(reflect.ValueOf(v))
}
