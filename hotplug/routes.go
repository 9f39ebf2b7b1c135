package hotplug

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"

	"github.com/kata-netmon/kata-netmon/matcher"
	"github.com/kata-netmon/kata-netmon/netmon/view"
	"github.com/sirupsen/logrus"
)

// maxRouteAttempts bounds the pushes of one route set the guest keeps
// refusing: after that many failures in a row the reconciler waits for the
// set to change (the error is logged), rather than retrying forever
// against a guest that cannot apply it.
const maxRouteAttempts = 5

// pushRoutes sends the full route set through the guest's NICs when it
// differs from the last set the guest accepted. Devices are named as the
// guest knows them (their attach names), so no route names a device the
// guest lacks. Routes the agent could not install with their meaning are
// left out, each said once.
func (r *Reconciler) pushRoutes(ctx context.Context, snap *view.Snapshot) {
	nics := r.nics.list()
	addrs := make(map[int][]netip.Prefix, len(nics))
	names := make(map[int]string, len(nics))
	for _, n := range nics {
		addrs[n.Index] = n.Addrs
		names[n.Index] = n.Name
	}
	keep, skipped := matcher.Routes(snap, addrs)
	var want []*Route
	for _, rt := range keep {
		want = append(want, RouteFromView(rt, names[rt.LinkIndex]))
	}
	for _, sk := range skipped {
		log := r.log.WithFields(logrus.Fields{"dst": sk.Route.Dst.String(), "ifname": names[sk.Route.LinkIndex],
			"metric": sk.Route.Priority, "reason": sk.Reason})
		if sk.Route.Gateway.IsValid() {
			log = log.WithField("gateway", sk.Route.Gateway.String())
		}
		if key := fmt.Sprintf("route:%+v", sk.Route); r.once(key) {
			if sk.Shadowed {
				log.Debug("route left out of the guest: the kernel does not use it either")
			} else {
				log.Warn("route left out of the guest: the agent could not install it with its meaning")
			}
		}
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
	if r.routeFail != nil && r.routeFail.attempts >= maxRouteAttempts {
		if reflect.DeepEqual(want, r.failedRoutes) {
			return // given up on this set; a change of it tries again
		}
		r.routeFail = nil
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
		r.failedRoutes = want
		log := r.log.WithError(err).WithFields(logrus.Fields{"attempt": r.routeFail.attempts, "routes": len(want)})
		if r.routeFail.attempts >= maxRouteAttempts {
			log.Error("route update failed; not retried until the routes change")
			return
		}
		log.Error("route update failed; will retry")
		return
	}
	r.routeFail = nil
	r.failedRoutes = nil
	r.lastRoutes = want
	r.log.WithField("routes", len(want)).Info("routes updated")
}
