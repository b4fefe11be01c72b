package model

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/coil-project/coil/coild/api"
)

// How pods relate to an egress. Only admins should be able to create pods
// in an egress's namespace, since its gateways are chosen by label there.
const (
	// EgressGatewayLabel, with the egress's name as value, makes a pod of
	// the egress's namespace one of its gateways.
	EgressGatewayLabel = "coil.cybozu.com/egress"
	// EgressClientAnnotationPrefix plus the egress's namespace is the
	// annotation key by which a pod of any namespace opts in; its value
	// names the egress (several names may be comma-separated). The plugin
	// filters the annotations the runtime passes by it too, and cannot
	// import this package (etcd's client): the REST package, which both
	// import, holds it.
	EgressClientAnnotationPrefix = api.EgressAnnotationPrefix
)

// MaxVNI is the largest VXLAN network identifier; VNIs are 24 bits and 0
// is never handed out.
const MaxVNI = 1<<24 - 1

// Egress is a set of destinations that client pods reach through gateway
// pods of one namespace, which NAT the traffic to their own addresses.
// Gateways are the pods of Namespace labelled coil.cybozu.com/egress=Name;
// clients opt in with the annotation egress.coil.cybozu.com/<Namespace>:
// <Name>. Only the record lives in etcd; pods are Kubernetes' business.
type Egress struct {
	Namespace    string         `json:"namespace"`
	Name         string         `json:"name"`
	Destinations []netip.Prefix `json:"destinations"`
	// VNI identifies the egress's tunnels; unique among egresses.
	VNI       uint32    `json:"vni"`
	CreatedAt time.Time `json:"createdAt"`
	// Replicas above 0 asks coil-controller to run that many gateway pods
	// for the egress (a Deployment and a PodDisruptionBudget in
	// Namespace); 0 leaves the gateways to the user.
	Replicas int32 `json:"replicas,omitempty"`
	// Image is the gateway pods' image when Replicas > 0; empty runs
	// coil-controller's default, the Coil image.
	Image string `json:"image,omitempty"`
}

// MaxGatewayReplicas bounds Egress.Replicas: a gateway per node of a large
// cluster is already more than clients need.
const MaxGatewayReplicas = 1000

// maxImageLen bounds Egress.Image, well above the longest reference a
// registry takes (name 255 plus tag or digest).
const maxImageLen = 512

// Managed reports whether coil-controller runs the egress's gateways.
func (e Egress) Managed() bool { return e.Replicas > 0 }

// Key is "<namespace>/<name>", how egresses are named everywhere.
func (e Egress) Key() string { return e.Namespace + "/" + e.Name }

// ParseDestinations parses CIDRs as given on a command line. Each must be
// canonical (no host bits set).
func ParseDestinations(cidrs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := parseCanonical(strings.TrimSpace(c))
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Validate checks an egress on its own: names, destinations.
func (e *Egress) Validate() error {
	for _, n := range []struct{ what, v string }{{"namespace", e.Namespace}, {"egress name", e.Name}} {
		if len(n.v) > 63 || !dns1123Label.MatchString(n.v) {
			return fmt.Errorf("%w: %s %q must be a DNS-1123 label (lower-case letters, digits and '-', at most 63)", ErrInvalidName, n.what, n.v)
		}
	}
	if len(e.Destinations) == 0 {
		return fmt.Errorf("%w: egress %s", ErrNoDestination, e.Key())
	}
	seen := map[netip.Prefix]bool{}
	for _, d := range e.Destinations {
		if !d.IsValid() || d.Addr().Is4In6() || d.Addr().Zone() != "" || d.Masked() != d {
			return fmt.Errorf("%w: destination %s of egress %s is not a canonical CIDR", ErrInvalidCIDR, d, e.Key())
		}
		if seen[d] {
			return fmt.Errorf("%w: %s in egress %s", ErrDuplicateDestination, d, e.Key())
		}
		seen[d] = true
	}
	return e.validateGateways()
}

// validateGateways checks Replicas and Image: an image only for managed
// gateways, and one that a container runtime could take as a reference
// (no spaces or control characters, no leading '-' that a tool might take
// for an option).
func (e *Egress) validateGateways() error {
	if e.Replicas < 0 || e.Replicas > MaxGatewayReplicas {
		return fmt.Errorf("%w: egress %s: replicas %d not in 0..%d", ErrInvalidGateways, e.Key(), e.Replicas, MaxGatewayReplicas)
	}
	if e.Image == "" {
		return nil
	}
	if e.Replicas == 0 {
		return fmt.Errorf("%w: egress %s: an image needs replicas above 0 (coil-controller runs the gateways only then)", ErrInvalidGateways, e.Key())
	}
	if len(e.Image) > maxImageLen || strings.HasPrefix(e.Image, "-") ||
		strings.ContainsFunc(e.Image, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("%w: egress %s: image %q is not an image reference", ErrInvalidGateways, e.Key(), e.Image)
	}
	return nil
}

// PreferredVNI is the VNI an egress gets unless another egress holds it
// already: a hash of its namespace and name into 1..MaxVNI. Deriving it
// keeps VNIs stable when an egress is deleted and created again.
func PreferredVNI(namespace, name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(namespace + "/" + name))
	return h.Sum32()%MaxVNI + 1
}

func (s *Store) egressesPrefix() string { return s.prefix + "egresses/" }
func (s *Store) egressKey(namespace, name string) string {
	return s.egressesPrefix() + namespace + "/" + name
}

// egressSnapshot lists every egress and the revision of the list.
// A corrupt record is skipped and reported, unless strict: choosing a VNI
// no other egress holds needs every egress, so that fails instead.
func (s *Store) egressSnapshot(ctx context.Context, strict bool) ([]Egress, int64, error) {
	resp, err := s.kv.Get(ctx, s.egressesPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, etcdErr("list egresses", err)
	}
	out := make([]Egress, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		e, err := s.DecodeEgress(string(kv.Key), kv.Value)
		if err != nil {
			if strict {
				return nil, 0, fmt.Errorf("%w (repair or delete it first)", err)
			}
			s.reportCorrupt("egresses", string(kv.Key), err)
			continue
		}
		out = append(out, e)
	}
	return out, resp.Header.Revision, nil
}

// CreateEgress validates e, gives it a VNI no other egress holds and
// stores it; it returns the stored record. Fails with ErrEgressExists, a
// validation error or ErrVNIExhausted, changing nothing.
//
// Like CreatePool, the VNI is chosen on a view of every egress and
// committed only if no egress key changed since that view, so two
// concurrent creations never get the same VNI.
func (s *Store) CreateEgress(ctx context.Context, e Egress) (Egress, error) {
	if err := e.Validate(); err != nil {
		return Egress{}, fmt.Errorf("create egress %s: %w", e.Key(), err)
	}
	key := s.egressKey(e.Namespace, e.Name)
	var rec Egress
	err := retryConflicts(ctx, maxConflictAttempts, func() error {
		all, rev, err := s.egressSnapshot(ctx, true)
		if err != nil {
			return err
		}
		used := make(map[uint32]bool, len(all))
		for _, o := range all {
			if o.Namespace == e.Namespace && o.Name == e.Name {
				return ErrEgressExists
			}
			used[o.VNI] = true
		}
		vni, ok := freeVNI(PreferredVNI(e.Namespace, e.Name), used)
		if !ok {
			return ErrVNIExhausted
		}
		rec = e
		rec.VNI = vni
		rec.CreatedAt = time.Now().UTC()
		resp, err := s.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.egressesPrefix()), "<", rev+1).WithPrefix(),
				clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, encode(rec))).
			Commit()
		if err != nil {
			return etcdErr("commit", err)
		}
		if !resp.Succeeded {
			// Another egress came or went: choose again on a fresh view.
			return errConflict
		}
		return nil
	})
	if err != nil {
		return Egress{}, fmt.Errorf("create egress %s: %w", e.Key(), err)
	}
	return rec, nil
}

// freeVNI returns the first VNI from want on (wrapping, skipping 0) that
// used lacks.
func freeVNI(want uint32, used map[uint32]bool) (uint32, bool) {
	if len(used) >= MaxVNI {
		return 0, false
	}
	v := want
	for used[v] {
		v = v%MaxVNI + 1
	}
	return v, true
}

// GetEgress returns one egress or ErrEgressNotFound.
func (s *Store) GetEgress(ctx context.Context, namespace, name string) (Egress, error) {
	key := s.egressKey(namespace, name)
	resp, err := s.kv.Get(ctx, key)
	if err != nil {
		return Egress{}, fmt.Errorf("get egress %s/%s: %w", namespace, name, etcdErr("get", err))
	}
	if len(resp.Kvs) == 0 {
		return Egress{}, fmt.Errorf("get egress %s/%s: %w", namespace, name, ErrEgressNotFound)
	}
	return s.DecodeEgress(key, resp.Kvs[0].Value)
}

// ListEgresses returns every egress, sorted by namespace and name.
func (s *Store) ListEgresses(ctx context.Context) ([]Egress, error) {
	all, _, err := s.egressSnapshot(ctx, false)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(all, func(a, b Egress) int { return strings.Compare(a.Key(), b.Key()) })
	return all, nil
}

// DeleteEgress removes an egress; ErrEgressNotFound if there is none.
// Nodes see it go through WatchEgresses and remove the tunnels.
func (s *Store) DeleteEgress(ctx context.Context, namespace, name string) error {
	resp, err := s.kv.Delete(ctx, s.egressKey(namespace, name))
	if err != nil {
		return fmt.Errorf("delete egress %s/%s: %w", namespace, name, etcdErr("delete", err))
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("delete egress %s/%s: %w", namespace, name, ErrEgressNotFound)
	}
	return nil
}

// WatchEgresses calls fn with every egress now and again after each
// change, until ctx ends, like WatchPools.
func (s *Store) WatchEgresses(ctx context.Context, retry time.Duration, fn func([]Egress)) error {
	return s.watchList(ctx, "egresses", s.egressesPrefix(), retry, func(ctx context.Context) (int64, error) {
		all, rev, err := s.egressSnapshot(ctx, false)
		if err != nil {
			return 0, err
		}
		fn(all)
		return rev, nil
	})
}

// DestinationChange is an edit of an egress's destinations: either Set,
// which replaces them, or Remove and then Add. The zero change changes
// nothing.
type DestinationChange struct {
	Set    []netip.Prefix
	Add    []netip.Prefix
	Remove []netip.Prefix
}

// Apply edits e's destinations. Adding one the egress has already fails
// with ErrDuplicateDestination, removing one it lacks with
// ErrDestinationNotFound; a destination both added and removed is
// refused. The result is validated like a new egress (no destination
// left is ErrNoDestination). On error e is unchanged.
func (c DestinationChange) Apply(e *Egress) error {
	if len(c.Set) > 0 && (len(c.Add) > 0 || len(c.Remove) > 0) {
		return fmt.Errorf("%w: a destination set replaces them all and cannot be combined with additions or removals", ErrInvalidChange)
	}
	dst := slices.Clone(e.Destinations)
	if len(c.Set) > 0 {
		dst = slices.Clone(c.Set)
	}
	for _, r := range c.Remove {
		if slices.Contains(c.Add, r) {
			return fmt.Errorf("%w: destination %s both added and removed", ErrInvalidChange, r)
		}
		i := slices.Index(dst, r)
		if i < 0 {
			return fmt.Errorf("%w: %s is not a destination of egress %s", ErrDestinationNotFound, r, e.Key())
		}
		dst = slices.Delete(dst, i, i+1)
	}
	for _, a := range c.Add {
		if slices.Contains(dst, a) {
			return fmt.Errorf("%w: %s in egress %s", ErrDuplicateDestination, a, e.Key())
		}
		dst = append(dst, a)
	}
	next := *e
	next.Destinations = dst
	if err := next.Validate(); err != nil {
		return err
	}
	*e = next
	return nil
}

// EgressChange is an edit of an egress: its destinations, and the
// gateways coil-controller runs for it. Nil fields are left as they are.
type EgressChange struct {
	Destinations DestinationChange
	// Replicas, when set, becomes Egress.Replicas; 0 hands the gateways
	// back to the user and also clears the image.
	Replicas *int32
	// Image, when set, becomes Egress.Image; "" is the default image.
	Image *string
}

// Apply edits e as DestinationChange.Apply does, then sets the gateway
// fields; the result is validated like a new egress. On error e is
// unchanged.
func (c EgressChange) Apply(e *Egress) error {
	next := *e
	if err := c.Destinations.Apply(&next); err != nil {
		return err
	}
	if c.Replicas != nil {
		next.Replicas = *c.Replicas
		if next.Replicas == 0 {
			next.Image = ""
		}
	}
	if c.Image != nil {
		next.Image = *c.Image
	}
	if err := next.Validate(); err != nil {
		return err
	}
	*e = next
	return nil
}

// sameEgress reports whether two records of one egress say the same.
func sameEgress(a, b Egress) bool {
	return slices.Equal(a.Destinations, b.Destinations) && a.Replicas == b.Replicas && a.Image == b.Image
}

// UpdateEgress changes the destinations of an existing egress in place,
// as ChangeEgress does with only a destination change.
func (s *Store) UpdateEgress(ctx context.Context, namespace, name string, change DestinationChange) (Egress, bool, error) {
	return s.ChangeEgress(ctx, namespace, name, EgressChange{Destinations: change})
}

// ChangeEgress changes an existing egress in place: its destinations and
// its managed gateways. Its VNI, creation time and key stay, so nodes only
// reprogram the routes of the destinations that changed. It returns the
// stored record and whether it changed. The record is rewritten only if it
// is unchanged since it was read (retrying a bounded number of times
// otherwise), so concurrent updates never lose one another's edits. Fails
// with ErrEgressNotFound or a validation error, changing nothing.
func (s *Store) ChangeEgress(ctx context.Context, namespace, name string, change EgressChange) (Egress, bool, error) {
	key := s.egressKey(namespace, name)
	var rec Egress
	var changed bool
	err := retryConflicts(ctx, maxConflictAttempts, func() error {
		resp, err := s.kv.Get(ctx, key)
		if err != nil {
			return etcdErr("get", err)
		}
		if len(resp.Kvs) == 0 {
			return ErrEgressNotFound
		}
		kv := resp.Kvs[0]
		cur, err := s.DecodeEgress(key, kv.Value)
		if err != nil {
			return err
		}
		next := cur
		if err := change.Apply(&next); err != nil {
			return err
		}
		rec = next
		if changed = !sameEgress(next, cur); !changed {
			return nil
		}
		tx, err := s.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpPut(key, encode(next))).
			Commit()
		if err != nil {
			return etcdErr("commit", err)
		}
		if !tx.Succeeded {
			return errConflict
		}
		return nil
	})
	if err != nil {
		return Egress{}, false, fmt.Errorf("update egress %s/%s: %w", namespace, name, err)
	}
	return rec, changed, nil
}
