package hotplug

import (
	"context"
	"errors"
	"reflect"

	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon/view"
)

// pushRoutes sends the full route set through attached devices when it
// differs from the last set the guest accepted. Devices are named as the
// guest knows them (their attach names), so no route names a device the
// guest lacks.
func (r *Reconciler) pushRoutes(ctx context.Context, snap *view.Snapshot) {
	nics := r.nics.list()
	devices := make(map[int]bool, len(nics))
	names := make(map[int]string, len(nics))
	for _, n := range nics {
		devices[n.Index] = true
		names[n.Index] = n.Name
	}
	var want []*Route
	for _, rt := range matcher.Routes(snap, devices) {
		want = append(want, RouteFromView(rt, names[rt.LinkIndex]))
	}
	if len(want) == 0 {
		// Nothing to add; the agent never deletes, so an empty call
		// would do nothing.
		r.lastRoutes = want
		r.routeFail = nil
		return
	}
	if r.routeFail == nil && reflect.DeepEqual(want, r.lastRoutes) {
		return
	}
	if !r.retry.due(r.routeFail) {
		return
	}
	err := r.calls.do(ctx, "UpdateRoutes", func(ctx context.Context) error {
		_, err := r.cfg.Sandbox.UpdateRoutes(ctx, want)
		return err
	})
	if errors.Is(err, errBusy) {
		return
	}
	if err != nil {
		r.routeFail = r.failed(r.routeFail, err)
		r.log.WithError(err).WithFields(map[string]any{"attempt": r.routeFail.attempts, "routes": len(want)}).
			Error("route update failed; will retry")
		return
	}
	r.routeFail = nil
	r.lastRoutes = want
	r.log.WithField("routes", len(want)).Info("routes updated")
}
