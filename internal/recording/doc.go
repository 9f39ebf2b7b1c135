// Package recording is a dry-run hotplug.Sandbox: it plugs nothing, keeps
// the guest a Kata sandbox would have and reports every call it receives as
// an Event, in the form the watch command prints. The watch command and the
// Docker tests use it; it is not part of the port.
package recording
