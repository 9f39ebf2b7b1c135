// Package shimcfg builds the shimhook.Config a Kata shim passes for a Docker
// sandbox, for the e2e tests, benchmarks and demo that start the monitor the
// shim's way: Docker's containerd namespace ("moby"), a Docker sandbox's OCI
// spec, and shimhook's default settings with dockerd's netns as the peer
// netns. Callers add what differs (the hypervisor's pid, a log, a metrics
// registry, other settings).
package shimcfg

import (
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/kata-netmon/kata-netmon/hotplug"
	"github.com/kata-netmon/kata-netmon/shimhook"
)

// Docker returns the config for the sandbox id whose netns is netns, driven
// through sb, with endpoint peers in dockerdNetNS.
func Docker(id string, sb hotplug.Sandbox, netns, dockerdNetNS string) shimhook.Config {
	s := shimhook.DefaultSettings()
	s.DockerdNetNS = dockerdNetNS
	return shimhook.Config{
		SandboxID: id,
		Namespace: "moby",
		Spec:      DockerSpec(),
		Sandbox:   sb,
		NetNSPath: netns,
		Settings:  s,
	}
}

// DockerSpec is the part of a Docker sandbox's OCI spec the shim hook reads:
// its namespace entries, the network one with an empty path (a new netns,
// which Kata creates).
func DockerSpec() *specs.Spec {
	return &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{
		{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.MountNamespace},
	}}}
}
