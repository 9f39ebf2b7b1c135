package kata

// How the wrapper reaches Kata's sandbox.
//
// Kata's shim service (pkg/containerd-shim-v2, type service) keeps the
// sandbox in the unexported field service.sandbox (vc.VCSandbox) and its
// runtime configuration in service.config (*oci.RuntimeConfig); it offers no
// hook and no accessor. The options were:
//   - a Kata API: none returns the shim's sandbox. vci (the vc.VC that
//     creates it) is an unexported package variable, and loading the
//     sandbox again from its persisted state would give a second in-memory
//     Sandbox whose endpoint list is not the one Kata's shim uses (two
//     diverging lists is exactly the bug we must not add);
//   - a patch to Kata (docs/kata.md, patch mode): the right answer for people
//     who build Kata, not for a drop-in next to a stock Kata;
//   - reading the two fields with reflect + unsafe: chosen, as the narrowest
//     means that works. It reads, never writes; it reads once, right after
//     Kata's Create returned in the same goroutine (Create writes both under
//     its lock and hands the result back through a channel, so the read
//     happens after the write); it checks the field names and types before
//     touching them, so a Kata whose internals changed gives an error that
//     names the Kata version this was written against, and the wrapper then
//     behaves exactly as Kata's shim (no monitor). reach_test.go runs it
//     against the real Kata service and fails loudly if it no longer works.

import (
	"errors"
	"fmt"
	"reflect"
	"unsafe"

	"github.com/kata-containers/kata-containers/src/runtime/pkg/katautils"
	"github.com/kata-containers/kata-containers/src/runtime/pkg/oci"
	vc "github.com/kata-containers/kata-containers/src/runtime/virtcontainers"
)

// VerifiedKata is the Kata release (and commit) this reach was written and
// tested against.
const VerifiedKata = "4.1.0 (commit 7c6ba40c54)"

// ErrUnreachable is returned (wrapped) when Kata's shim service no longer
// has the fields the wrapper reads.
var ErrUnreachable = errors.New("cannot reach the sandbox inside Kata's shim service")

const (
	fieldSandbox = "sandbox"
	fieldConfig  = "config"
)

var (
	typeVCSandbox = reflect.TypeFor[vc.VCSandbox]()
	typeConfig    = reflect.TypeFor[*oci.RuntimeConfig]()
)

// reachSandbox returns Kata's sandbox and runtime configuration from the
// service that containerdshim.New returned. Before Kata's Create made the
// sandbox, both are nil and err is nil.
func reachSandbox(inner any) (vc.VCSandbox, *oci.RuntimeConfig, error) {
	sbv, err := unexportedField(inner, fieldSandbox, typeVCSandbox)
	if err != nil {
		return nil, nil, err
	}
	cfv, err := unexportedField(inner, fieldConfig, typeConfig)
	if err != nil {
		return nil, nil, err
	}
	sb, _ := sbv.Interface().(vc.VCSandbox)
	cfg, _ := cfv.Interface().(*oci.RuntimeConfig)
	return sb, cfg, nil
}

// unexportedField returns a readable copy of the unexported field name, of
// type want, of the struct *inner points to.
func unexportedField(inner any, name string, want reflect.Type) (reflect.Value, error) {
	v := reflect.ValueOf(inner)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return reflect.Value{}, unreachable("the shim service is %T, not a pointer to Kata's service struct", inner)
	}
	f := v.Elem().FieldByName(name)
	if !f.IsValid() {
		return reflect.Value{}, unreachable("%s has no field %q", v.Type(), name)
	}
	if f.Type() != want {
		return reflect.Value{}, unreachable("%s.%s is a %s, not a %s", v.Type(), name, f.Type(), want)
	}
	// f is addressable (an element of a pointer); reading an unexported
	// field needs this one step of unsafe.
	return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem(), nil
}

func unreachable(format string, args ...any) error {
	return fmt.Errorf("%w: %s. kata-netmon reads containerdshim.service.sandbox (vc.VCSandbox) and service.config "+
		"(*oci.RuntimeConfig) as in Kata %s; this Kata is %s (commit %q). Update shimhook/kata/reach.go, or build Kata "+
		"with the patch in docs/kata.md", ErrUnreachable, fmt.Sprintf(format, args...), VerifiedKata, katautils.VERSION, katautils.COMMIT)
}
