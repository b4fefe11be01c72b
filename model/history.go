package model

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// Releaser names who deletes address records through a store. etcd keeps
// every revision of a key until compaction but not who wrote it, so each
// release and reclaim also writes a release note naming its releaser in
// the same transaction (docs/schema.md#release-notes): the note at the
// revision of a deletion tells AddressHistory who freed the address, and
// when.
type Releaser struct {
	// Component is the program: "coild", "coil-controller" or "coilctl".
	Component string `json:"by"`
	// Host is where it runs: a coild's node, a controller replica's pod,
	// coilctl's user@machine.
	Host string `json:"host,omitempty"`
}

// String is "component on host".
func (r Releaser) String() string {
	if r.Host == "" {
		return r.Component
	}
	return r.Component + " on " + r.Host
}

// releaseNote is the value of a release note key.
type releaseNote struct {
	Releaser
	At time.Time `json:"at"`
	// Block is the ID of a block reclaimed with all its addresses
	// (ForceReleaseBlock); empty for the release of one address.
	Block string `json:"block,omitempty"`
}

// SetReleaser makes every later ReleaseAddress and ForceReleaseBlock of
// the store leave a release note naming r. Without it (tests, tools) no
// note is written and the history of such a release names no releaser.
// Call it before the store is shared.
func (s *Store) SetReleaser(r Releaser) {
	s.releaser = &r
}

func (s *Store) releasesPrefix() string { return s.prefix + "releases/" }

// noteKey is the one key each releaser rewrites: a coild writes only its
// own node's, so release notes add no key that two writers contend for.
func (s *Store) noteKey(r Releaser) string {
	host := strings.ReplaceAll(r.Host, "/", "_")
	if host == "" {
		host = "-"
	}
	return s.releasesPrefix() + r.Component + "/" + host
}

// noteOps returns the put of a release note for a transaction that
// deletes records, or nothing when the store has no releaser.
func (s *Store) noteOps(block string) []clientv3.Op {
	if s.releaser == nil {
		return nil
	}
	n := releaseNote{Releaser: *s.releaser, At: time.Now().UTC(), Block: block}
	return []clientv3.Op{clientv3.OpPut(s.noteKey(*s.releaser), encode(n))}
}

// Kinds of AddressEvent.
const (
	// EventAllocated: the address record was created.
	EventAllocated = "allocated"
	// EventReleased: the record was deleted by the coild of the node that
	// held it (CNI DEL or GC), or by someone unknown (no release note).
	EventReleased = "released"
	// EventReclaimed: the record was deleted by another component
	// (coil-controller's leak sweep, coilctl address free), or with its
	// whole block when coil-controller freed a deleted node's blocks.
	EventReclaimed = "reclaimed"
	// EventUpdated: the record was rewritten in place (Coil does not do
	// that; a hand edit with etcdctl would).
	EventUpdated = "updated"
)

// AddressEvent is one change of an address record in etcd's history.
type AddressEvent struct {
	Revision int64
	// Kind is one of the Event* constants.
	Kind string
	// Address is the record as written, or as it was when deleted.
	Address Address
	// At is when it happened: the record's creation time for an
	// allocation, the release note's time for a deletion; zero when
	// unknown (a deletion without a note).
	At time.Time
	// By is who deleted the record; nil for writes and for deletions
	// without a release note.
	By *Releaser
	// Block is the ID of the block the address was reclaimed with, when
	// coil-controller freed a whole block of a deleted node.
	Block string
}

// AddressHistory is what etcd still knows about one address's key.
type AddressHistory struct {
	IP   netip.Addr
	Pool string
	// Key is the address record's key.
	Key string
	// FromRevision is the oldest revision the history covers: 1 when
	// etcd has compacted nothing, else etcd's compaction revision.
	FromRevision int64
	// Compacted is true when etcd has dropped revisions before
	// FromRevision: what happened to the address then is lost.
	Compacted bool
	// Initial is the record as it was at FromRevision, when the history
	// is compacted and the address was allocated then: its allocation
	// is older than what etcd kept.
	Initial *Address
	// Events are the changes after FromRevision, oldest first.
	Events []AddressEvent
	// Revision is the revision the history was read at.
	Revision int64
}

// AddressHistory reads from etcd's revision history who held ip and when:
// every creation and deletion of its record that etcd has not compacted
// away, with who deleted it (from the release notes). ErrNotFound means no
// pool contains ip; the history follows the current pools' layout.
func (s *Store) AddressHistory(ctx context.Context, ip netip.Addr) (AddressHistory, error) {
	if s.watcher == nil {
		return AddressHistory{}, errors.New("address history: store has no watcher")
	}
	ip = ip.Unmap()
	pools, err := s.ListPools(ctx)
	if err != nil {
		return AddressHistory{}, err
	}
	h := AddressHistory{IP: ip}
	for _, p := range pools {
		if sub, blk, off, ok := p.Locate(ip); ok {
			h.Pool = p.Name
			h.Key = s.addressKey(p.Name, sub, blk, off)
			break
		}
	}
	if h.Key == "" {
		return AddressHistory{}, fmt.Errorf("history of %s: %w: no pool contains it", ip, ErrNotFound)
	}
	resp, err := s.kv.Get(ctx, h.Key, clientv3.WithCountOnly())
	if err != nil {
		return AddressHistory{}, fmt.Errorf("history of %s: %w", ip, etcdErr("get", err))
	}
	h.Revision = resp.Header.Revision
	h.FromRevision = 1

	events, err := s.replay(ctx, h.Key, h.FromRevision, h.Revision)
	var compacted *compactedError
	if errors.As(err, &compacted) {
		h.FromRevision, h.Compacted = compacted.rev, true
		if h.Initial, err = s.addressAt(ctx, h.Key, h.FromRevision); err != nil {
			return AddressHistory{}, fmt.Errorf("history of %s: %w", ip, err)
		}
		events, err = s.replay(ctx, h.Key, h.FromRevision+1, h.Revision)
	}
	if err != nil {
		return AddressHistory{}, fmt.Errorf("history of %s: %w", ip, err)
	}
	for _, ev := range events {
		e, err := s.historyEvent(ctx, ev)
		if err != nil {
			return AddressHistory{}, fmt.Errorf("history of %s at revision %d: %w", ip, ev.Kv.ModRevision, err)
		}
		h.Events = append(h.Events, e)
	}
	return h, nil
}

// Since returns the history without the events known to be older than t:
// everything after the last event dated before t. Events of unknown time
// after it are kept, since they may be newer.
func (h AddressHistory) Since(t time.Time) AddressHistory {
	cut := 0
	for i, e := range h.Events {
		if !e.At.IsZero() && e.At.Before(t) {
			cut = i + 1
		}
	}
	h.Events = h.Events[cut:]
	return h
}

// compactedError says etcd has compacted the revision a replay asked for.
type compactedError struct{ rev int64 }

func (e *compactedError) Error() string {
	return fmt.Sprintf("revisions before %d are compacted", e.rev)
}

// addressAt reads the record at key as of revision rev; nil when absent.
func (s *Store) addressAt(ctx context.Context, key string, rev int64) (*Address, error) {
	resp, err := s.kv.Get(ctx, key, clientv3.WithRev(rev))
	if err != nil {
		return nil, etcdErr("get", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	a, err := s.DecodeAddress(key, resp.Kvs[0].Value)
	if err != nil {
		return nil, err
	}
	a.Revision = resp.Kvs[0].CreateRevision
	return &a, nil
}

// replay returns the events of key from revision from to revision to,
// from etcd's history: a watch that starts in the past is sent every
// stored change since. etcd answers a progress request with its current
// revision only once the watch has caught up (and drops it before), so
// the request is repeated until answered: that ends the replay when the
// last change of key is older than to.
func (s *Store) replay(ctx context.Context, key string, from, to int64) ([]*clientv3.Event, error) {
	if from > to {
		// etcd would not answer the progress request of a watch that
		// starts in the future.
		return nil, nil
	}
	// A stream of its own (the client shares one per metadata), so that
	// the progress answer waits for no other watch of the process.
	wctx := metadata.AppendToOutgoingContext(clientv3.WithRequireLeader(ctx), "coil-watch", "address-history")
	wctx, cancel := context.WithCancel(wctx)
	defer cancel()
	ch := s.watcher.Watch(wctx, key, clientv3.WithRev(from), clientv3.WithPrevKV())
	tick := time.NewTicker(progressRetry)
	defer tick.Stop()
	var events []*clientv3.Event
	for {
		select {
		case <-tick.C:
			if err := s.watcher.RequestProgress(wctx); err != nil {
				return nil, etcdErr("watch progress", err)
			}
			continue
		case resp, ok := <-ch:
			if !ok {
				if ctx.Err() != nil {
					return nil, context.Cause(ctx)
				}
				return nil, fmt.Errorf("%w: watch closed", ErrUnavailable)
			}
			if resp.CompactRevision != 0 {
				return nil, &compactedError{rev: resp.CompactRevision}
			}
			if err := resp.Err(); err != nil {
				return nil, etcdErr("watch", err)
			}
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision > to {
					return events, nil
				}
				events = append(events, ev)
				if ev.Kv.ModRevision == to {
					return events, nil
				}
			}
			if resp.IsProgressNotify() && resp.Header.Revision >= to {
				return events, nil
			}
		}
	}
}

// progressRetry is how often replay asks etcd whether its watch caught up.
const progressRetry = 50 * time.Millisecond

// historyEvent turns a change of an address key into an AddressEvent,
// reading the release note written with a deletion.
func (s *Store) historyEvent(ctx context.Context, ev *clientv3.Event) (AddressEvent, error) {
	rev := ev.Kv.ModRevision
	key := string(ev.Kv.Key)
	if ev.Type == clientv3.EventTypePut {
		a, err := s.DecodeAddress(key, ev.Kv.Value)
		if err != nil {
			return AddressEvent{}, err
		}
		a.Revision = ev.Kv.CreateRevision
		kind := EventAllocated
		if ev.Kv.Version > 1 {
			kind = EventUpdated
		}
		return AddressEvent{Revision: rev, Kind: kind, Address: a, At: a.CreatedAt}, nil
	}
	e := AddressEvent{Revision: rev, Kind: EventReleased}
	if ev.PrevKv != nil {
		a, err := s.DecodeAddress(key, ev.PrevKv.Value)
		if err != nil {
			return AddressEvent{}, err
		}
		a.Revision = ev.PrevKv.CreateRevision
		e.Address = a
	}
	// Only the transaction that deleted the record wrote at its revision.
	resp, err := s.kv.Get(ctx, s.releasesPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev),
		clientv3.WithMinModRev(rev), clientv3.WithMaxModRev(rev))
	if err != nil {
		return AddressEvent{}, etcdErr("get release note", err)
	}
	if len(resp.Kvs) == 0 {
		return e, nil
	}
	var n releaseNote
	if err := json.Unmarshal(resp.Kvs[0].Value, &n); err != nil {
		// A note that does not decode names nobody; the deletion stands.
		return e, nil
	}
	e.At, e.By, e.Block = n.At, &n.Releaser, n.Block
	if n.Block != "" || n.Component != "coild" || n.Host != e.Address.Node {
		e.Kind = EventReclaimed
	}
	return e, nil
}
