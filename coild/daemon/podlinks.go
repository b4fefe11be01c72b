package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/coil-project/coil/coild/server"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/nodenet"
)

// podLinks takes released pods' links off the node for the REST server:
// the host routes at once, the veths in the background. The background
// worker deletes what queued up meanwhile in one kernel request (the host
// veths moved into nodenet.DoomedLinkGroup, then deleted by group), since
// the kernel's cost of a deletion is mostly a wait per request, taken
// under the lock every ADD and DEL of the node needs. Its worker is run by
// the daemon's environment; deletions still queued when coild stops are
// done by the next start's reconcileKernel, which removes the veths of
// pods without an address before coild serves.
type podLinks struct {
	d *daemon

	mu    sync.Mutex
	queue []linkRemoval
	wake  chan struct{}
}

type linkRemoval struct {
	addr     model.Address
	link     server.HostLink
	done     func()
	attempts int
}

// maxLinkAttempts bounds the retries of a failing deletion. The address
// stays held until the deletion succeeds: after the last attempt, until
// coild restarts (its restore removes the veths of pods without an
// address before it serves).
const maxLinkAttempts = 10

func newPodLinks(d *daemon) *podLinks {
	return &podLinks{d: d, wake: make(chan struct{}, 1)}
}

// Detach implements server.PodLinks.
func (p *podLinks) Detach(addr model.Address) (server.HostLink, error) {
	var link server.HostLink
	err := p.d.inHostNS(func() error {
		idx, name, err := nodenet.RemoveHostRoutes(addr.IPs())
		link = server.HostLink{Index: idx, Name: name}
		return err
	})
	return link, err
}

// RemoveLater implements server.PodLinks.
func (p *podLinks) RemoveLater(addr model.Address, link server.HostLink, done func()) {
	p.mu.Lock()
	p.queue = append(p.queue, linkRemoval{addr: addr, link: link, done: done})
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// run deletes queued links until ctx ends.
func (p *podLinks) run(ctx context.Context) error {
	for {
		p.mu.Lock()
		q := p.queue
		p.queue = nil
		p.mu.Unlock()
		failed := p.removeBatch(q)
		var retry <-chan time.Time
		var t *time.Timer
		if len(failed) > 0 {
			p.mu.Lock()
			p.queue = append(failed, p.queue...)
			p.mu.Unlock()
			t = time.NewTimer(2 * time.Second)
			retry = t.C
		}
		select {
		case <-ctx.Done():
		case <-p.wake:
		case <-retry:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// removeBatch deletes the links of the released pods in q with one
// request: each pod's host veth is checked and moved into the doomed
// group, then the group is deleted. A pod whose links cannot go that way,
// or a batch the kernel refuses, falls back to one deletion per pod. It
// returns the removals to retry.
func (p *podLinks) removeBatch(q []linkRemoval) []linkRemoval {
	if len(q) == 0 {
		return nil
	}
	if d := p.d.cfg.LinkRemovalDelay; d > 0 && q[0].attempts == 0 {
		time.Sleep(d)
	}
	var doomed, single []linkRemoval
	for _, r := range q {
		if r.attempts > 0 {
			// Failed before: the slow way, with its own error.
			single = append(single, r)
			continue
		}
		marked, err := p.doom(r)
		switch {
		case err != nil:
			single = append(single, r)
		case marked:
			doomed = append(doomed, r)
		default:
			// Nothing of the pod's left: its links are gone.
			r.done()
		}
	}
	if len(doomed) > 0 {
		err := p.d.inHostNS(nodenet.DeleteDoomedLinks)
		if err != nil {
			p.d.log.Error("delete links of released pods in one request; deleting them one by one", "pods", len(doomed), "error", err)
			single = append(single, doomed...)
		} else {
			for _, r := range doomed {
				r.done()
			}
		}
	}
	var failed []linkRemoval
	for _, r := range single {
		if !p.remove(r) {
			if r.attempts++; r.attempts < maxLinkAttempts {
				failed = append(failed, r)
			}
		}
	}
	return failed
}

// doom moves the host veth of one released pod into the doomed group
// (nodenet.DoomPodLinks, or the host link its routes went through when the
// namespace is gone), reporting whether there is a link to delete.
func (p *podLinks) doom(r linkRemoval) (bool, error) {
	a := r.addr
	veth := nodenet.PodHostVethName(a.Namespace, a.Pod, a.Interface)
	var marked bool
	err := p.d.inHostNS(func() error {
		if a.NetNS != "" && nodenet.CheckPodNetNS(a.NetNS, p.d.hostNS) == nil {
			m, err := nodenet.DoomPodLinks(a.NetNS, a.Interface, veth)
			if err != nil {
				return err
			}
			marked = m
		}
		if !marked && r.link.Index > 0 {
			m, err := nodenet.DoomHostLink(r.link.Index, r.link.Name)
			if err != nil {
				return err
			}
			marked = m
		}
		return nil
	})
	return marked, err
}

// remove deletes the links of one released pod: its interface in its
// network namespace, which takes the host side with it (nodenet.TeardownPod
// checks the namespace is not the node's own and leaves a link of another
// sandbox alone), then the host link its routes went through, if it is
// still there (a namespace already gone, a record without one).
// It calls r.done when the links are gone, and reports whether they are.
func (p *podLinks) remove(r linkRemoval) bool {
	a := r.addr
	veth := nodenet.PodHostVethName(a.Namespace, a.Pod, a.Interface)
	err := p.d.inHostNS(func() error {
		if a.NetNS != "" && nodenet.CheckPodNetNS(a.NetNS, p.d.hostNS) == nil {
			if err := nodenet.TeardownPod(a.NetNS, a.Interface, veth); err != nil {
				return err
			}
		}
		if r.link.Index > 0 {
			return nodenet.DeleteHostLink(r.link.Index, r.link.Name)
		}
		return nil
	})
	if err != nil {
		p.d.log.Error("delete links of released pod; its address stays held", "pod", a.Namespace+"/"+a.Pod,
			"interface", a.Interface, "attempt", r.attempts+1, "error", err)
		return false
	}
	r.done()
	return true
}
