// Command kata-netmon runs kata-netmon outside a shim.
//
//	kata-netmon watch (--netns PATH | --pid PID) [--json] [--dockerd-netns PATH|self] [--docker-netns-dir DIR]
//
// watch runs the real monitor, matcher and reconciler against a recording
// sandbox: a dry run that attaches nothing and prints every call a Kata
// sandbox would receive.
//
// Without --dockerd-netns, peers are resolved among the named and process
// netns (scan mode). --dockerd-netns self is the shim's arrangement: dockerd
// shares this process's own netns, and nothing else is accepted or scanned
// (run it as `nsenter --net=<dockerd's netns> kata-netmon watch ...`).
// Overlay networks' peers are looked up among the netns in
// --docker-netns-dir (default /run/docker/netns; "" for none), as the shim
// does.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/internal/monitor"
	"github.com/kata-netmon/kata-netmon/internal/recording"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: kata-netmon watch (--netns PATH | --pid PID) [--json] [--dockerd-netns PATH|self] [--docker-netns-dir DIR] [--ready-timeout D] [--log-level L]`

// ownNetNS is the --dockerd-netns value meaning this process's own netns
// (netmon.Config.DockerdNetNS "" without scanning), as in the shim.
const ownNetNS = "self"

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "watch" {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	nsPath := fs.String("netns", "", "path of the netns to watch (a bind mount or /proc/PID/ns/net)")
	pid := fs.Int("pid", 0, "watch this process's netns, and stop when it exits")
	asJSON := fs.Bool("json", false, "one JSON object per call on stdout")
	dockerd := fs.String("dockerd-netns", "", `dockerd's netns path, or "self" for this process's own netns (as in the shim); default: resolve peers among named and process netns`)
	netnsDir := fs.String("docker-netns-dir", shimhook.DefaultDockerNetNSDir, `Docker's netns directory (<exec-root>/netns), where overlay networks' peers live; "" for none`)
	ready := fs.Duration("ready-timeout", 5*time.Second, "first reconcile: how long to wait for candidate links")
	level := fs.String("log-level", "info", "log level (debug, info, warn, error)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if (*nsPath == "") == (*pid == 0) || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "kata-netmon: give exactly one of --netns or --pid")
		fmt.Fprintln(stderr, usage)
		return 2
	}
	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		fmt.Fprintf(stderr, "kata-netmon: %v\n", err)
		return 2
	}
	logger := logrus.New()
	logger.Out = stderr
	logger.Level = lvl
	path := *nsPath
	if *pid != 0 {
		path = fmt.Sprintf("/proc/%d/ns/net", *pid)
	}
	log := logrus.NewEntry(logger).WithField("netns", path)

	dockerdNetNS, scan := *dockerd, *dockerd == ""
	if dockerdNetNS == ownNetNS {
		dockerdNetNS = ""
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := watch(ctx, watchConfig{
		path: path, pid: *pid, dockerdNetNS: dockerdNetNS, netnsDir: *netnsDir, scan: scan, readyTimeout: *ready, log: log,
		print: printer(stdout, *asJSON),
	}); err != nil {
		fmt.Fprintf(stderr, "kata-netmon: %v\n", err)
		return 1
	}
	return 0
}

type watchConfig struct {
	path         string
	pid          int
	dockerdNetNS string // "" is this process's own netns
	netnsDir     string // Docker's netns directory ("" for none)
	scan         bool   // also accept any named or process netns as the peers' netns
	readyTimeout time.Duration
	log          *logrus.Entry
	print        func(recording.Event)
}

// watch runs the monitor against a recording sandbox until ctx ends, the
// process exits (pid), or the netns can no longer be watched.
func watch(ctx context.Context, c watchConfig) error {
	if c.pid != 0 {
		// Fail early and clearly for a pid that is not there.
		if err := unix.Kill(c.pid, 0); err != nil && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("--pid %d: %w", c.pid, err)
		}
	}
	sb := &recording.Sandbox{
		Caps:    hotplug.Capabilities{HotplugNIC: true, HotUnplugNIC: true},
		OnEvent: c.print,
	}
	m, err := monitor.Start(ctx, monitor.Config{
		NetNSPath:      c.path,
		DockerdNetNS:   c.dockerdNetNS,
		DockerNetNSDir: c.netnsDir,
		ScanNetNS:      c.scan,
		Sandbox:        sb,
		ExitPID:        c.pid,
		Log:            c.log,
	})
	if err != nil {
		return err
	}
	defer m.Stop(context.Background())
	sctx, cancel := context.WithTimeout(ctx, c.readyTimeout)
	st, err := m.Sync(sctx)
	cancel()
	if err != nil && !errors.Is(err, hotplug.ErrNotSettled) {
		return err
	}
	c.log.WithFields(logrus.Fields{"attached": len(st.NICs), "pending": st.Pending}).Info("first reconcile done")
	m.Run()
	select {
	case <-ctx.Done():
		return nil
	case <-m.Done():
	}
	if err := m.Err(); err != nil && !errors.Is(err, monitor.ErrProcessExited) {
		return err
	}
	return nil
}

// printer prints events as JSON lines or as human lines.
func printer(w io.Writer, asJSON bool) func(recording.Event) {
	enc := json.NewEncoder(w)
	return func(e recording.Event) {
		if asJSON {
			_ = enc.Encode(e)
			return
		}
		switch e.Op {
		case "attach":
			fmt.Fprintf(w, "attach %s mac %s mtu %d addresses %s\n", e.Name, e.MAC, e.MTU, strings.Join(e.Addresses, ","))
		case "detach":
			fmt.Fprintf(w, "detach %s mac %s\n", e.Name, e.MAC)
		case "routes":
			var parts []string
			for _, r := range e.Routes {
				s := r.Dest
				if r.Gateway != "" {
					s += " via " + r.Gateway
				}
				s += " dev " + r.Device
				if r.Metric != 0 {
					s += fmt.Sprintf(" metric %d", r.Metric)
				}
				parts = append(parts, s)
			}
			fmt.Fprintf(w, "routes %s\n", strings.Join(parts, "; "))
		}
	}
}
