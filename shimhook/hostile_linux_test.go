package shimhook

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/hotplug/hotplugtest"
	"github.com/kata-netmon/kata-netmon/internal/nsfs"
	"github.com/kata-netmon/kata-netmon/netmon/netmontest"
)

// hstEnv is a dockerd netns with a bridge network, the sandbox's netns
// with a ready Docker endpoint, and another sandbox's netns with one of
// its own: the "wrong" netns hostile annotations point at.
type hstEnv struct {
	dockerdPath string
	sandboxPath string
	otherPath   string
	sandboxMAC  string // the endpoint that must be attached
	otherMAC    string // the endpoint that must never be
}

func newHstEnv(t *testing.T) *hstEnv {
	t.Helper()
	netmontest.RequireRoot(t)
	e := &hstEnv{}
	var dockerdNS, sandboxNS, otherNS netns.NsHandle
	e.dockerdPath, dockerdNS = netmontest.NewNetNS(t)
	e.sandboxPath, sandboxNS = netmontest.NewNetNS(t)
	e.otherPath, otherNS = netmontest.NewNetNS(t)
	dockerd := netmontest.HandleAt(t, dockerdNS)
	br := netmontest.AddBridge(t, dockerd)
	netmontest.AddAddr(t, dockerd, br.Index, "172.28.0.1/16")
	mk := func(ns netns.NsHandle, host int) string {
		ep := netmontest.VethPeerInNetNS(t, dockerdNS, ns, br.Name)
		mac := net.HardwareAddr{0x02, 0x42, 0xac, 0x1c, 0, byte(host)}
		ep.Configure("eth0", mac.String(), fmt.Sprintf("172.28.0.%d/16", host), "172.28.0.1")
		return mac.String()
	}
	e.sandboxMAC = mk(sandboxNS, 2)
	e.otherMAC = mk(otherNS, 3)
	return e
}

// start runs Start with the annotation set and trusted, and returns what
// was logged at warning level or worse, the netns the monitor watches, and
// the MACs the sandbox was asked to attach. The monitor is stopped before
// it returns: every attach happens in Start's first reconcile.
func (e *hstEnv) start(t *testing.T, annotation string) (warnings []*logrus.Entry, watched string, attached []string) {
	t.Helper()
	lg := logrus.New()
	lg.SetLevel(logrus.DebugLevel)
	lg.SetOutput(hstWriter{t})
	hook := logtest.NewLocal(lg)
	fs := &hotplugtest.FakeSandbox{}
	s := DefaultSettings()
	s.DockerdNetNS = e.dockerdPath
	s.TrustNetNSAnnotation = true
	s.ReadyTimeout = 10 * time.Second
	spec := specWithNet("", true)
	spec.Annotations = map[string]string{NetNSAnnotation: annotation}
	m, err := Start(context.Background(), Config{
		SandboxID: "knm-hostile", Namespace: "moby", Spec: spec, Sandbox: fs,
		NetNSPath: e.sandboxPath, Settings: s, Log: logrus.NewEntry(lg),
	})
	if err != nil || m == nil {
		t.Fatalf("Start = %v, %v", m, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
	for _, en := range hook.AllEntries() {
		if en.Level <= logrus.WarnLevel {
			warnings = append(warnings, en)
		}
		if en.Message == "first reconcile done" {
			watched, _ = en.Data["netns"].(string)
		}
	}
	for _, c := range fs.CallsOf(hotplugtest.OpAddInterface) {
		attached = append(attached, c.MAC())
	}
	return warnings, watched, attached
}

type hstWriter struct{ t *testing.T }

func (w hstWriter) Write(p []byte) (int, error) {
	if os.Getenv("KNM_TEST_LOG") != "" {
		w.t.Logf("%s", p)
	}
	return len(p), nil
}

// TestHostileAnnotationStart: with the annotation trusted, every hostile
// value is refused at shimhook.Start with exactly one warning; the monitor
// watches the sandbox's own netns (its endpoint is attached) and never
// attaches the endpoint that lives only in the netns the annotation named.
func TestHostileAnnotationStart(t *testing.T) {
	e := newHstEnv(t)
	good := dockerNetNSEntry(t, bindAt(e.sandboxPath))
	other := dockerNetNSEntry(t, bindAt(e.otherPath))
	tests := []struct {
		name, path, why string
	}{
		{"relative", strings.TrimPrefix(good, "/"), "not an absolute path"},
		{"relative dot-dot", "../" + strings.TrimPrefix(good, "/"), "not an absolute path"},
		{"dot-dot to the host netns", dockerNetNSDir + "/../../../proc/1/ns/net", "not directly under"},
		{"dot-dot to another sandbox", dockerNetNSDir + "/" + filepath.Base(good) + "/../" + filepath.Base(other), "not the sandbox's"},
		{"symlink to the host netns", dockerNetNSEntry(t, func(p string) error { return os.Symlink("/proc/1/ns/net", p) }), "symlink"},
		{"symlink to another sandbox's netns", dockerNetNSEntry(t, func(p string) error { return os.Symlink(other, p) }), "symlink"},
		{"/proc/1/ns/net", "/proc/1/ns/net", "not directly under"},
		{"a regular file", dockerNetNSEntry(t, func(p string) error { return os.WriteFile(p, []byte("x"), 0o644) }), "not a network namespace"},
		{"a FIFO", dockerNetNSEntry(t, func(p string) error { return unix.Mkfifo(p, 0o600) }), "not a network namespace"},
		{"a device node", dockerNetNSEntry(t, func(p string) error {
			return unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3)))
		}), "not a network namespace"},
		{"outside /run/docker/netns", e.otherPath, "not directly under"},
		{"another sandbox's netns in /run/docker/netns", other, "not the sandbox's"},
		{"the same, through /var/run", "/var" + other, "not the sandbox's"},
		{"a missing entry", filepath.Join(dockerNetNSDir, "knm-missing"), "no such file"},
		{"NUL inside", good + "\x00x", "invalid argument"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			warnings, watched, attached := e.start(t, tc.path)
			if len(warnings) != 1 || warnings[0].Message != "netns annotation refused; watching the sandbox's own netns" {
				var msgs []string
				for _, w := range warnings {
					msgs = append(msgs, w.Message)
				}
				t.Fatalf("warnings %q, want exactly the one refusal", msgs)
			}
			if err, _ := warnings[0].Data[logrus.ErrorKey].(error); err == nil || !strings.Contains(err.Error(), tc.why) {
				t.Errorf("refusal says %v, want it to say %q", err, tc.why)
			}
			if _, ok := warnings[0].Data["sandbox"]; !ok {
				t.Errorf("refusal without the sandbox field: %v", warnings[0].Data)
			}
			if watched != e.sandboxPath {
				t.Errorf("watched %q, want the sandbox's %q", watched, e.sandboxPath)
			}
			if len(attached) != 1 || attached[0] != e.sandboxMAC {
				t.Errorf("attached %v, want only the sandbox's endpoint %s (the other's is %s)", attached, e.sandboxMAC, e.otherMAC)
			}
		})
	}
	// The control: the sandbox's own entry is accepted and watched, with
	// no warning.
	t.Run("the sandbox's own entry", func(t *testing.T) {
		warnings, watched, attached := e.start(t, good)
		if len(warnings) != 0 || watched != good || len(attached) != 1 || attached[0] != e.sandboxMAC {
			t.Errorf("warnings %d, watched %q (want %q), attached %v", len(warnings), watched, good, attached)
		}
	})
}

// FuzzOpenAnnotatedNetNS feeds the validator arbitrary strings (seeded
// with ../, //, NUL, very long paths and symlink-ish names around real
// entries: the sandbox's netns, another sandbox's, symlinks to both and to
// the host's, a regular file). Invariant: it never panics, whatever it
// accepts is open on the sandbox's netns, and the path also opens there
// (following symlinks). Needs root.
func FuzzOpenAnnotatedNetNS(f *testing.F) {
	netmontest.RequireRoot(f)
	sandboxPath, _ := netmontest.NewNetNS(f)
	otherPath, _ := netmontest.NewNetNS(f)
	sandbox, err := nsfs.Stat(sandboxPath)
	if err != nil {
		f.Fatal(err)
	}
	good := hstEntry(f, "good", bindAt(sandboxPath))
	other := hstEntry(f, "other", bindAt(otherPath))
	linkGood := hstEntry(f, "lgood", func(p string) error { return os.Symlink(good, p) })
	linkHost := hstEntry(f, "lhost", func(p string) error { return os.Symlink("/proc/1/ns/net", p) })
	linkRel := hstEntry(f, "lrel", func(p string) error { return os.Symlink(filepath.Base(other), p) })
	file := hstEntry(f, "file", func(p string) error { return os.WriteFile(p, nil, 0o644) })
	base := filepath.Base(good)
	for _, s := range []string{
		good, "/var" + good, other, linkGood, linkHost, linkRel, file, sandboxPath, "/proc/1/ns/net", "/proc/self/ns/net",
		dockerNetNSDir, dockerNetNSDir + "/", dockerNetNSDir + "/.", dockerNetNSDir + "/..",
		dockerNetNSDir + "//" + base, "//run/docker/netns/" + base, "/run//docker/netns/" + base,
		dockerNetNSDir + "/./" + base, dockerNetNSDir + "/../netns/" + base, dockerNetNSDir + "/" + base + "/",
		dockerNetNSDir + "/" + base + "/.", dockerNetNSDir + "/" + base + "/..", dockerNetNSDir + "/" + base + "/../" + filepath.Base(other),
		"/var/run/../run/docker/netns/" + base, "/run/docker/../docker/netns/" + base,
		good + "\x00", "\x00" + good, dockerNetNSDir + "/\x00" + base, "run/docker/netns/" + base, "./" + base, "",
		dockerNetNSDir + "/" + strings.Repeat("a", 300), "/" + strings.Repeat("x/", 3000) + base,
		dockerNetNSDir + "/" + strings.Repeat("../", 50) + "proc/1/ns/net", "/proc/self/fd/0", "/proc/thread-self/ns/net",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		ns, err := openAnnotatedNetNS(path, sandbox)
		if err != nil {
			return
		}
		defer ns.Close()
		if ns.ID() != sandbox {
			t.Fatalf("accepted %q open on %v, not the sandbox's %v", path, ns.ID(), sandbox)
		}
		id, serr := nsfs.Stat(path)
		if serr != nil || id != sandbox {
			t.Fatalf("accepted %q, which opens to %v (%v), not the sandbox's %v", path, id, serr, sandbox)
		}
		if !strings.HasPrefix(path, "/") {
			t.Fatalf("accepted a relative path %q", path)
		}
	})
}

// hstEntry creates /run/docker/netns/knm-fz-<name>-<hex> with mk and removes
// it (unmounting first) on cleanup.
func hstEntry(tb testing.TB, name string, mk func(string) error) string {
	tb.Helper()
	if _, err := os.Stat(dockerNetNSDir); os.IsNotExist(err) {
		if err := os.MkdirAll(dockerNetNSDir, 0o755); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = os.Remove(dockerNetNSDir) }) // fails harmlessly if not empty
	}
	p := filepath.Join(dockerNetNSDir, "knm-fz-"+name+"-"+strings.TrimPrefix(netmontest.RandName(), "knm-"))
	tb.Cleanup(func() {
		_ = unix.Unmount(p, unix.MNT_DETACH)
		_ = os.Remove(p)
	})
	if err := mk(p); err != nil {
		tb.Fatalf("make %s: %v", p, err)
	}
	return p
}
