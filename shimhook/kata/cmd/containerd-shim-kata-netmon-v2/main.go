// Command containerd-shim-kata-netmon-v2 is Kata Containers' containerd shim
// (containerd-shim-kata-v2, Go runtime), built from a Kata tree with
// kata-netmon's patch series, with kata-netmon registered: for sandboxes in
// Docker's containerd namespace it attaches the network Docker configures
// after the sandbox exists, and follows `docker network connect` and
// `disconnect`. Everything else is Kata's shim. It is the drop-in for hosts
// that keep a stock Kata installed beside it: register it with Docker as
// runtime type io.containerd.kata-netmon.v2 (docs/kata.md).
package main

import (
	"fmt"
	"os"

	containerdtypes "github.com/containerd/containerd/api/types"
	shimapi "github.com/containerd/containerd/runtime/v2/shim"
	"google.golang.org/protobuf/proto"

	containerdshim "github.com/kata-containers/kata-containers/src/runtime/pkg/containerd-shim-v2"
	"github.com/kata-containers/kata-containers/src/runtime/pkg/katautils"

	"github.com/kata-netmon/kata-netmon/shimhook/kata"
	_ "github.com/kata-netmon/kata-netmon/shimhook/kata/register"
)

// RuntimeType is the containerd runtime type; containerd runs it as the
// binary containerd-shim-kata-netmon-v2.
const RuntimeType = "io.containerd.kata-netmon.v2"

// Same binary options as Kata's shim: Kata reaps its own children.
func shimConfig(config *shimapi.Config) {
	config.NoReaper = true
	config.NoSubreaper = true
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fixes := kata.TreeFixes()
		missing := fixes.Missing()
		if missing == "" {
			missing = "none"
		}
		fmt.Printf("%s containerd shim (Golang) with kata-netmon: id: %q, Kata version: %s, commit: %v; "+
			"series fixes missing: %s (kata-netmon verified against Kata %s)\n",
			katautils.PROJECT, RuntimeType, katautils.VERSION, katautils.COMMIT, missing, kata.VerifiedKata)
		os.Exit(0)
	}
	if len(os.Args) == 2 && os.Args[1] == "-info" {
		data, err := proto.Marshal(&containerdtypes.RuntimeInfo{
			Name:    RuntimeType,
			Version: &containerdtypes.RuntimeVersion{Version: katautils.VERSION, Revision: katautils.COMMIT},
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "failed to marshal RuntimeInfo: %v\n", err)
			os.Exit(1)
		}
		os.Stdout.Write(data)
		os.Exit(0)
	}
	shimapi.Run(RuntimeType, containerdshim.New, shimConfig)
}
