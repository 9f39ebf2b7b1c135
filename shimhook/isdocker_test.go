package shimhook

import (
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go"
)

func specWithNet(path string, present bool) *specs.Spec {
	s := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}}}}
	if present {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: path})
	}
	return s
}

func TestIsDocker(t *testing.T) {
	const bundle = "/run/containerd/io.containerd.runtime.v2.task/moby/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name string
		cfg  Config
		want bool
	}{
		{"moby namespace, new netns", Config{Namespace: "moby", Spec: specWithNet("", true)}, true},
		{"k8s namespace", Config{Namespace: "k8s.io", Spec: specWithNet("", true)}, false},
		{"configured namespace", Config{Namespace: "docker-ci", Spec: specWithNet("", true),
			Settings: Settings{DockerNamespaces: []string{"moby", "docker-ci"}}}, true},
		{"namespace unknown, moby bundle", Config{BundlePath: bundle, Spec: specWithNet("", true)}, true},
		{"namespace unknown, bundle with trailing slash", Config{BundlePath: bundle + "/", Spec: specWithNet("", true)}, true},
		{"namespace unknown, other bundle", Config{BundlePath: "/run/containerd/io.containerd.runtime.v2.task/default/x", Spec: specWithNet("", true)}, false},
		{"namespace unknown, moby elsewhere in path", Config{BundlePath: "/srv/moby/x", Spec: specWithNet("", true)}, false},
		{"namespace wins over bundle", Config{Namespace: "default", BundlePath: bundle, Spec: specWithNet("", true)}, false},
		{"--net=host: no network entry", Config{Namespace: "moby", Spec: specWithNet("", false)}, false},
		{"--net=container:X: a path", Config{Namespace: "moby", Spec: specWithNet("/proc/42/ns/net", true)}, false},
		{"dockerd created the netns (moby#52488)", Config{Namespace: "moby", Spec: specWithNet("/run/docker/netns/0123456789ab", true)}, true},
		{"dockerd created the netns, via /var/run", Config{Namespace: "moby", Spec: specWithNet("/var/run/docker/netns/0123456789ab", true)}, true},
		{"the netns directory itself", Config{Namespace: "moby", Spec: specWithNet("/run/docker/netns/", true)}, false},
		{"below an entry", Config{Namespace: "moby", Spec: specWithNet("/run/docker/netns/x/y", true)}, false},
		{"dot-dot out of the directory", Config{Namespace: "moby", Spec: specWithNet("/run/docker/netns/../../proc/1/ns/net", true)}, false},
		{"relative", Config{Namespace: "moby", Spec: specWithNet("run/docker/netns/0123456789ab", true)}, false},
		{"no spec", Config{Namespace: "moby"}, false},
		{"no linux section", Config{Namespace: "moby", Spec: &specs.Spec{}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Settings = tc.cfg.Settings.withDefaults()
			got, why := IsDocker(tc.cfg)
			if got != tc.want {
				t.Fatalf("IsDocker = %v (%s), want %v", got, why, tc.want)
			}
			if why == "" {
				t.Fatal("no reason given")
			}
		})
	}
}

func TestSettingsDefaults(t *testing.T) {
	got := Settings{}.withDefaults()
	d := DefaultSettings()
	if got.ReadyTimeout != d.ReadyTimeout || got.CallTimeout != d.CallTimeout || len(got.DockerNamespaces) != 1 {
		t.Fatalf("withDefaults = %+v", got)
	}
	if got.Enabled || got.TrustNetNSAnnotation || got.FailStartOnAttachError {
		t.Fatalf("withDefaults turned a switch on: %+v", got)
	}
	if !d.Enabled || d.TrustNetNSAnnotation || d.FailStartOnAttachError {
		t.Fatalf("unsafe defaults: %+v", d)
	}
}
