package katarules

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestLoadSettings(t *testing.T) {
	def := DefaultSettings()
	if !def.Enabled || !slices.Equal(def.DockerNamespaces, []string{"moby"}) || def.TrustNetNSAnnotation ||
		def.FailStartOnAttachError || def.LogLevel != "" || def.ReadyTimeout != 5*time.Second || def.DockerNetNSDir != "/run/docker/netns" {
		t.Fatalf("defaults are not the safe ones: %+v", def)
	}

	dir := t.TempDir()
	conf := filepath.Join(dir, "configuration.toml")
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Kata's own tables are left alone; only [netmon] is read.
	write(conf, `
[hypervisor.qemu]
path = "/usr/bin/qemu-system-x86_64"

[runtime]
internetworking_model = "tcfilter"

[netmon]
enable = true
docker_namespaces = ["moby", "docker-ci"]
trust_netns_annotation = true
ready_timeout = "3s"
log_level = "debug"
docker_netns_dir = "/var/run/docker-ci/netns"
`)
	write(filepath.Join(dir, "config.d", "10-netmon.toml"), `
[netmon]
fail_start_on_attach_error = true
call_timeout = "1h"   # out of range: warned, kept
`)
	env := map[string]string{}
	getenv := func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	tests := []struct {
		name     string
		path     string
		env      map[string]string
		check    func(Settings) bool
		warnings int
	}{
		{"no file", "", nil, func(s Settings) bool { return s.Enabled && s.LogLevel == "" }, 0},
		{"missing file", filepath.Join(dir, "nope.toml"), nil, func(s Settings) bool { return s.Enabled }, 0},
		{"file and drop-in", conf, nil, func(s Settings) bool {
			return slices.Equal(s.DockerNamespaces, []string{"moby", "docker-ci"}) && s.TrustNetNSAnnotation &&
				s.FailStartOnAttachError && s.ReadyTimeout == 3*time.Second && s.CallTimeout == 30*time.Second && s.LogLevel == "debug" &&
				s.DockerNetNSDir == "/var/run/docker-ci/netns"
		}, 1},
		{"environment wins", conf, map[string]string{
			EnvEnable: "false", EnvDockerNamespaces: " moby ,,moby2 ", EnvTrustAnnotation: "0", EnvLogLevel: "WARN",
			EnvReadyTimeout: "750ms", EnvDockerdNetNS: "/run/netns/dockerd", EnvDockerNetNSDir: "",
		}, func(s Settings) bool {
			return !s.Enabled && slices.Equal(s.DockerNamespaces, []string{"moby", "moby2"}) && !s.TrustNetNSAnnotation &&
				s.LogLevel == "warn" && s.ReadyTimeout == 750*time.Millisecond && s.DockerdNetNS == "/run/netns/dockerd" &&
				s.DockerNetNSDir == ""
		}, 1},
		{"bad environment keeps values", "", map[string]string{
			EnvEnable: "maybe", EnvDockerNamespaces: ",", EnvLogLevel: "loud", EnvReadyTimeout: "-1s", EnvDockerdNetNS: "relative",
			EnvDockerNetNSDir: "run/docker/netns",
		}, func(s Settings) bool {
			return s.Enabled && slices.Equal(s.DockerNamespaces, []string{"moby"}) && s.LogLevel == "" && s.ReadyTimeout == 5*time.Second && s.DockerdNetNS == "" &&
				s.DockerNetNSDir == "/run/docker/netns"
		}, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clear(env)
			for k, v := range tt.env {
				env[k] = v
			}
			s, w := LoadSettings(tt.path, getenv)
			if !tt.check(s) {
				t.Errorf("settings %+v", s)
			}
			if len(w) != tt.warnings {
				t.Errorf("warnings %q, want %d", w, tt.warnings)
			}
		})
	}

	t.Run("unparsable file", func(t *testing.T) {
		clear(env)
		bad := filepath.Join(t.TempDir(), "configuration.toml")
		write(bad, "[netmon\nenable = false\n")
		s, w := LoadSettings(bad, getenv)
		if !s.Enabled || len(w) != 1 {
			t.Errorf("settings %+v, warnings %q", s, w)
		}
	})
}
