// Package metrics exports one sandbox's kata-netmon counters to Prometheus.
//
// A Sandbox is one monitor's set of series, all carrying the constant label
// sandbox="<id>", registered as a single collector on the Registerer the
// caller passes (the drop-in shim passes prometheus.DefaultRegisterer, which
// Kata's shim metrics endpoint serves). It implements hotplug.Observer
// (sandbox calls, guest NICs) and netmon.Observer (netlink events applied
// and skipped, resyncs); both report recovered panics.
//
// Many monitors in one process share one registry without colliding: the
// sandbox label makes every series distinct, and a monitor's collector is
// registered and unregistered as one unit (Unregister on Stop), so a stopped
// sandbox leaves no series behind and the others are untouched. A second
// Sandbox with the same id on the same registry is refused
// (prometheus.AlreadyRegisteredError).
//
// It owns no goroutine and decides nothing: what is counted, and when, is
// the monitor's business (netmon, hotplug, shimhook).
package metrics
