package katarules

// No Kata import: the operator's settings, from a [netmon] table in Kata's
// configuration file (and its config.d drop-ins) and from KATA_NETMON_*
// environment variables, which win.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/sirupsen/logrus"

	"github.com/kata-netmon/kata-netmon/shimhook"
)

// Settings are shimhook's settings plus the shim's own.
type Settings struct {
	shimhook.Settings
	// LogLevel is kata-netmon's log level ("debug", "info", ...); "" follows
	// the shim's (Kata's) level.
	LogLevel string
}

// DefaultSettings are the safe defaults: enabled for containerd namespace
// "moby", the netns annotation not trusted, a failed first attach logged but
// never failing Start, 5 s first reconcile, 30 s per sandbox call.
func DefaultSettings() Settings { return Settings{Settings: shimhook.DefaultSettings()} }

// Environment variables, each overriding the [netmon] key of the same name.
const (
	EnvEnable             = "KATA_NETMON_ENABLE"                     // enable
	EnvDockerNamespaces   = "KATA_NETMON_DOCKER_NAMESPACES"          // docker_namespaces, comma separated
	EnvTrustAnnotation    = "KATA_NETMON_TRUST_NETNS_ANNOTATION"     // trust_netns_annotation
	EnvFailStartOnAttach  = "KATA_NETMON_FAIL_START_ON_ATTACH_ERROR" // fail_start_on_attach_error
	EnvReadyTimeout       = "KATA_NETMON_READY_TIMEOUT"              // ready_timeout, Go duration
	EnvCallTimeout        = "KATA_NETMON_CALL_TIMEOUT"               // call_timeout, Go duration
	EnvDockerdNetNS       = "KATA_NETMON_DOCKERD_NETNS"              // dockerd_netns
	EnvDockerNetNSDir     = "KATA_NETMON_DOCKER_NETNS_DIR"           // docker_netns_dir
	EnvLogLevel           = "KATA_NETMON_LOG_LEVEL"                  // log_level
	maxReadyTimeout       = time.Minute
	maxCallTimeout        = 5 * time.Minute
	configDropInDirectory = "config.d"
)

// netmonTable is the [netmon] table. Pointers tell "absent" from "false".
type netmonTable struct {
	Enable                 *bool     `toml:"enable"`
	DockerNamespaces       *[]string `toml:"docker_namespaces"`
	TrustNetNSAnnotation   *bool     `toml:"trust_netns_annotation"`
	FailStartOnAttachError *bool     `toml:"fail_start_on_attach_error"`
	ReadyTimeout           *string   `toml:"ready_timeout"`
	CallTimeout            *string   `toml:"call_timeout"`
	DockerdNetNS           *string   `toml:"dockerd_netns"`
	DockerNetNSDir         *string   `toml:"docker_netns_dir"`
	LogLevel               *string   `toml:"log_level"`
}

type configFile struct {
	Netmon netmonTable `toml:"netmon"`
}

// LoadSettings starts from DefaultSettings, applies the [netmon] table of
// configPath ("" for none) and then of each file in its config.d directory
// (in name order, as Kata reads drop-ins), then the environment (getenv
// nil means os.LookupEnv). Nothing here fails: a value that does not parse
// or is out of range is reported in warnings and the previous value kept,
// and a missing file is no [netmon] table.
func LoadSettings(configPath string, getenv func(string) (string, bool)) (s Settings, warnings []string) {
	s = DefaultSettings()
	if getenv == nil {
		getenv = os.LookupEnv
	}
	// Like Kata (katautils.decodeConfig), drop-ins only count next to a
	// main file that exists.
	if _, err := os.Stat(configPath); configPath != "" && err == nil {
		files := []string{configPath}
		dir := filepath.Join(filepath.Dir(configPath), configDropInDirectory)
		if ents, err := os.ReadDir(dir); err == nil {
			names := []string{}
			for _, e := range ents {
				if !e.IsDir() {
					names = append(names, filepath.Join(dir, e.Name()))
				}
			}
			sort.Strings(names)
			files = append(files, names...)
		}
		for _, f := range files {
			warnings = append(warnings, s.applyFile(f)...)
		}
	}
	warnings = append(warnings, s.applyEnv(getenv)...)
	return s, warnings
}

func (s *Settings) applyFile(path string) []string {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return []string{fmt.Sprintf("read %s: %v; its [netmon] table is ignored", path, err)}
	}
	var cf configFile
	if _, err := toml.Decode(string(data), &cf); err != nil {
		return []string{fmt.Sprintf("parse %s: %v; its [netmon] table is ignored", path, err)}
	}
	t := cf.Netmon
	var w []string
	where := func(key string) string { return fmt.Sprintf("%s: [netmon] %s", path, key) }
	if t.Enable != nil {
		s.Enabled = *t.Enable
	}
	if t.DockerNamespaces != nil {
		w = append(w, s.setNamespaces(*t.DockerNamespaces, where("docker_namespaces"))...)
	}
	if t.TrustNetNSAnnotation != nil {
		s.TrustNetNSAnnotation = *t.TrustNetNSAnnotation
	}
	if t.FailStartOnAttachError != nil {
		s.FailStartOnAttachError = *t.FailStartOnAttachError
	}
	if t.ReadyTimeout != nil {
		w = append(w, setDuration(&s.ReadyTimeout, *t.ReadyTimeout, maxReadyTimeout, where("ready_timeout"))...)
	}
	if t.CallTimeout != nil {
		w = append(w, setDuration(&s.CallTimeout, *t.CallTimeout, maxCallTimeout, where("call_timeout"))...)
	}
	if t.DockerdNetNS != nil {
		w = append(w, s.setDockerdNetNS(*t.DockerdNetNS, where("dockerd_netns"))...)
	}
	if t.DockerNetNSDir != nil {
		w = append(w, setAbsPath(&s.DockerNetNSDir, *t.DockerNetNSDir, where("docker_netns_dir"))...)
	}
	if t.LogLevel != nil {
		w = append(w, s.setLogLevel(*t.LogLevel, where("log_level"))...)
	}
	return w
}

func (s *Settings) applyEnv(getenv func(string) (string, bool)) []string {
	var w []string
	boolVar := func(name string, dst *bool) {
		v, ok := getenv(name)
		if !ok || strings.TrimSpace(v) == "" {
			return
		}
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			w = append(w, fmt.Sprintf("%s=%q is not a boolean; keeping %v", name, v, *dst))
			return
		}
		*dst = b
	}
	boolVar(EnvEnable, &s.Enabled)
	boolVar(EnvTrustAnnotation, &s.TrustNetNSAnnotation)
	boolVar(EnvFailStartOnAttach, &s.FailStartOnAttachError)
	if v, ok := getenv(EnvDockerNamespaces); ok && strings.TrimSpace(v) != "" {
		w = append(w, s.setNamespaces(strings.Split(v, ","), EnvDockerNamespaces)...)
	}
	if v, ok := getenv(EnvReadyTimeout); ok && strings.TrimSpace(v) != "" {
		w = append(w, setDuration(&s.ReadyTimeout, v, maxReadyTimeout, EnvReadyTimeout)...)
	}
	if v, ok := getenv(EnvCallTimeout); ok && strings.TrimSpace(v) != "" {
		w = append(w, setDuration(&s.CallTimeout, v, maxCallTimeout, EnvCallTimeout)...)
	}
	if v, ok := getenv(EnvDockerdNetNS); ok {
		w = append(w, s.setDockerdNetNS(v, EnvDockerdNetNS)...)
	}
	if v, ok := getenv(EnvDockerNetNSDir); ok {
		w = append(w, setAbsPath(&s.DockerNetNSDir, v, EnvDockerNetNSDir)...)
	}
	if v, ok := getenv(EnvLogLevel); ok && strings.TrimSpace(v) != "" {
		w = append(w, s.setLogLevel(v, EnvLogLevel)...)
	}
	return w
}

func (s *Settings) setNamespaces(in []string, where string) []string {
	var out []string
	for _, ns := range in {
		ns = strings.TrimSpace(ns)
		if ns != "" && !slices.Contains(out, ns) {
			out = append(out, ns)
		}
	}
	if len(out) == 0 {
		return []string{fmt.Sprintf("%s: no namespace given; keeping %v (set enable = false to turn kata-netmon off)", where, s.DockerNamespaces)}
	}
	s.DockerNamespaces = out
	return nil
}

func setDuration(dst *time.Duration, v string, max time.Duration, where string) []string {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d <= 0 || d > max {
		return []string{fmt.Sprintf("%s = %q: want a duration in (0, %v]; keeping %v", where, v, max, *dst)}
	}
	*dst = d
	return nil
}

func (s *Settings) setDockerdNetNS(v, where string) []string {
	return setAbsPath(&s.DockerdNetNS, v, where)
}

// setAbsPath sets *dst to v, an absolute path or "" (trimmed), and keeps
// *dst otherwise.
func setAbsPath(dst *string, v, where string) []string {
	v = strings.TrimSpace(v)
	if v != "" && !filepath.IsAbs(v) {
		return []string{fmt.Sprintf("%s = %q: want an absolute path or \"\"; keeping %q", where, v, *dst)}
	}
	*dst = v
	return nil
}

func (s *Settings) setLogLevel(v, where string) []string {
	v = strings.ToLower(strings.TrimSpace(v))
	if v == "" {
		s.LogLevel = ""
		return nil
	}
	if _, err := logrus.ParseLevel(v); err != nil {
		return []string{fmt.Sprintf("%s = %q: not a log level; keeping %q", where, v, s.LogLevel)}
	}
	s.LogLevel = v
	return nil
}
