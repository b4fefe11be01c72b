package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/coil-project/coil/model"
	"github.com/prometheus/client_golang/prometheus"
)

// releaseMetrics count what coild learns from etcd rather than from its
// own requests.
type releaseMetrics struct {
	blocks    prometheus.Counter
	addresses prometheus.Counter
	alive     prometheus.Gauge
}

func newReleaseMetrics(reg prometheus.Registerer) *releaseMetrics {
	m := &releaseMetrics{
		blocks: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "coild", Name: "blocks_released_elsewhere_total",
			Help: "Blocks of this node released in etcd by someone else (coil-controller, coilctl) while coild held them.",
		}),
		addresses: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "coild", Name: "addresses_released_elsewhere_total",
			Help: "Address records of this node deleted in etcd by someone else (leak reclaim, coilctl address free, block release).",
		}),
		alive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "coild", Name: "liveness_held",
			Help: "1 while coild holds its node's liveness key in etcd, else 0.",
		}),
	}
	reg.MustRegister(m.blocks, m.addresses, m.alive)
	return m
}

// keepAlive holds the node's liveness key until ctx ends: coil-controller
// releases the blocks of a deleted node only after it has expired.
func (d *daemon) keepAlive(ctx context.Context) error {
	err := d.store.KeepNodeAlive(ctx, d.cfg.NodeName, d.cfg.LivenessTTL, 2*time.Second, func(alive bool, err error) {
		if alive {
			d.releases.alive.Set(1)
			d.log.Info("holding the node's liveness key", "ttl", d.cfg.LivenessTTL)
			return
		}
		d.releases.alive.Set(0)
		d.log.Error("lost the node's liveness key; taking a new lease", "error", err)
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// followReleases applies to the allocator the releases of the node's
// blocks and addresses made in etcd by others, from the revision of the
// restore on. When the watch breaks (etcd unreachable, revision
// compacted) the allocator is compared with etcd again (Resync) and the
// watch resumes from that read.
func (d *daemon) followReleases(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case <-d.ready:
	}
	rev := d.alloc.RestoredRevision()
	for {
		err := d.store.WatchNodeReleases(ctx, d.cfg.NodeName, rev, d.applyRelease)
		if ctx.Err() != nil {
			return nil
		}
		if !errors.Is(err, model.ErrWatchBroken) {
			return err
		}
		d.log.Warn("watch of the node's records broke; comparing with etcd", "error", err)
		for {
			sleep(ctx, 2*time.Second)
			if ctx.Err() != nil {
				return nil
			}
			rctx, cancel := context.WithTimeout(ctx, 4*d.cfg.Etcd.Timeout)
			var blocks []model.Block
			var addrs []model.Address
			rev, blocks, addrs, err = d.alloc.Resync(rctx)
			cancel()
			if err == nil {
				for _, b := range blocks {
					d.blockReleasedElsewhere(b, nil)
				}
				for _, a := range addrs {
					d.addressReleasedElsewhere(a)
				}
				break
			}
			d.log.Error("compare with etcd failed; retrying", "error", err)
		}
	}
}

func (d *daemon) applyRelease(r model.Released) {
	switch {
	case r.Block != nil:
		if lost, ok := d.alloc.ForgetBlock(*r.Block); ok {
			d.blockReleasedElsewhere(*r.Block, lost)
		}
	case r.Address != nil:
		if a, ok := d.alloc.ForgetAddress(*r.Address); ok {
			d.addressReleasedElsewhere(a)
		}
	}
}

// blockReleasedElsewhere reports a block taken from this node. Its route
// is already withdrawn (the allocator's observer); the pods in lost keep
// addresses that another node may now hand out, which an operator must
// know about.
func (d *daemon) blockReleasedElsewhere(b model.Block, lost []model.Address) {
	d.releases.blocks.Inc()
	d.releases.addresses.Add(float64(len(lost)))
	var pods []string
	for _, a := range lost {
		pods = append(pods, a.Namespace+"/"+a.Pod)
	}
	d.log.Error("a block of this node was released in etcd by someone else: no longer allocating from it, route withdrawn",
		"block", b.ID(), "pods-still-using-it", pods)
}

func (d *daemon) addressReleasedElsewhere(a model.Address) {
	d.releases.addresses.Inc()
	d.log.Warn("an address of this node was released in etcd by someone else; it is free again",
		"address", a.IPs(), "pod", a.Namespace+"/"+a.Pod, "container", a.ContainerID, "interface", a.Interface)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
