package model

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/coil-project/coil/internal/jsonappend"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Owner says who an address is for: the node that allocates it and the
// container attachment that uses it.
type Owner struct {
	Node        string `json:"node"`
	Namespace   string `json:"namespace"`
	Pod         string `json:"pod"`
	ContainerID string `json:"containerID"`
	Interface   string `json:"interface"`
	// NetNS is the path of the pod's network namespace, when the runtime
	// gave it: coild enters it to keep the pod's egress tunnels in step,
	// also after a restart. Records written before it existed lack it.
	NetNS string `json:"netns,omitempty"`
	// PodUID is the pod's UID when the runtime passed it (K8S_POD_UID):
	// it tells a pod from a later pod of the same name, whose sandbox
	// must not keep the earlier one's leaked address alive.
	PodUID string `json:"podUID,omitempty"`
	// Network is the name of the CNI network configuration the address
	// was allocated for (the netconf "name"). A CNI GC of one network
	// frees only that network's records; a record without it (written
	// before it existed, or by a client that sent none) is never freed
	// by a GC, only by DEL or the controller's leak sweep.
	Network string `json:"network,omitempty"`
}

// Address is one allocated address (a pair in a dual-stack pool).
type Address struct {
	Pool   string     `json:"pool"`
	Subnet int        `json:"subnet"`
	Block  int        `json:"block"`
	Offset int        `json:"offset"`
	IPv4   netip.Addr `json:"ipv4,omitzero"`
	IPv6   netip.Addr `json:"ipv6,omitzero"`
	Owner
	CreatedAt time.Time `json:"createdAt"`
	// Revision is the etcd revision that created the record; a release
	// guarded by it cannot free a later allocation of the same address.
	Revision int64 `json:"-"`
}

// IPs returns the addresses, IPv4 first.
func (a Address) IPs() []netip.Addr {
	var ips []netip.Addr
	if a.IPv4.IsValid() {
		ips = append(ips, a.IPv4)
	}
	if a.IPv6.IsValid() {
		ips = append(ips, a.IPv6)
	}
	return ips
}

func newAddress(b Block, offset int, owner Owner, now time.Time) Address {
	v4, v6 := b.AddressAt(offset)
	owner.Node = b.Node
	return Address{
		Pool: b.Pool, Subnet: b.Subnet, Block: b.Index, Offset: offset,
		IPv4: v4, IPv6: v6, Owner: owner, CreatedAt: now,
	}
}

// AllocateAddress records the address at offset of block b for owner in one
// transaction: it succeeds only if b is still the caller's block and the
// address is free. It fails with ErrBlockLost or ErrAddressInUse otherwise.
//
// A record the same attachment (node, container id and interface) already
// holds at that offset is returned as a success: it is what an earlier
// call whose answer was lost committed, so asking again is safe. When
// etcd's answer is lost and cannot be learnt, the error wraps
// ErrOutcomeUnknown: the address may be recorded, and calling again with
// the same block, offset and owner settles it.
//
// Called alone, it is one transaction. Allocations (and the node's own
// releases) that arrive while another of the store's is in flight share
// one transaction, each with its own compares; if any compare fails, each
// goes again alone, so every caller gets the answer it would have had
// alone (batch.go).
func (s *Store) AllocateAddress(ctx context.Context, b Block, offset int, owner Owner) (Address, error) {
	if offset < 0 || offset >= b.Size() {
		return Address{}, fmt.Errorf("allocate offset %d of block %s: out of range", offset, b.ID())
	}
	a := newAddress(b, offset, owner, time.Now().UTC())
	bkey := s.blockKey(b.Pool, b.Subnet, b.Index)
	akey := s.addressKey(b.Pool, b.Subnet, b.Index, offset)
	val := encodeAddress(a)
	var (
		got Address
		err error
	)
	op := &batchOp{
		ctx:    ctx,
		guards: []guard{{bkey, b.Revision}, {akey, 0}},
		write:  clientv3.OpPut(akey, val),
		key:    akey,
		alone: func(ctx context.Context) {
			got, err = s.allocateAddress(ctx, b, a, bkey, akey, val)
		},
	}
	s.runBatched(op)
	switch {
	case op.err != nil:
		return Address{}, fmt.Errorf("allocate %v in block %s: %w", a.IPs(), b.ID(), op.err)
	case op.rev != 0:
		a.Revision = op.rev
		return a, nil
	}
	return got, err
}

// allocateAddress is AllocateAddress as its own transaction.
func (s *Store) allocateAddress(ctx context.Context, b Block, a Address, bkey, akey, val string) (Address, error) {
	resp, _, err := s.commit(ctx, func(ctx context.Context) clientv3.Txn {
		return s.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(bkey), "=", b.Revision),
				clientv3.Compare(clientv3.CreateRevision(akey), "=", 0)).
			Then(clientv3.OpPut(akey, val)).
			// On failure, what is in the way answers why, in the same request.
			Else(clientv3.OpGet(akey), clientv3.OpGet(bkey, clientv3.WithKeysOnly()))
	})
	if err != nil {
		return Address{}, fmt.Errorf("allocate %v in block %s: %w", a.IPs(), b.ID(), err)
	}
	if resp.Succeeded {
		a.Revision = resp.Header.Revision
		return a, nil
	}
	bkvs := resp.Responses[1].GetResponseRange().Kvs
	if len(bkvs) == 0 || bkvs[0].CreateRevision != b.Revision {
		return Address{}, fmt.Errorf("allocate %v in block %s: %w", a.IPs(), b.ID(), ErrBlockLost)
	}
	if akvs := resp.Responses[0].GetResponseRange().Kvs; len(akvs) > 0 {
		var cur Address
		if decode(akey, akvs[0].Value, &cur) == nil && cur.Node == a.Node &&
			cur.ContainerID == a.ContainerID && cur.Interface == a.Interface {
			cur.Revision = akvs[0].CreateRevision
			return cur, nil
		}
	}
	return Address{}, fmt.Errorf("allocate %v in block %s: %w", a.IPs(), b.ID(), ErrAddressInUse)
}

// ReleaseAddress deletes the record a on behalf of someone other than its
// node (coil-controller's leak reclaim, `coilctl address free`), provided
// it is the very record that was allocated (same creation revision). In
// the same transaction it tells the node, through its index (the block's
// "released" key, which the node's WatchNodeReleases follows), so that
// the node's allocator frees the address too. An address already gone is
// not an error; an address re-allocated to someone else fails with
// ErrNotOwner and is left alone.
func (s *Store) ReleaseAddress(ctx context.Context, a Address) error {
	ikey := s.nodeBlockKey(a.Node, a.Pool, a.Subnet, a.Block)
	rec := encode(releasedRecord{Revision: a.Revision, Address: json.RawMessage(encode(a))})
	return s.releaseAddress(ctx, a, clientv3.OpTxn(
		// Only a block the index holds: no entry is made up for a block
		// that is gone, or of a node not indexed yet (whose coild, older
		// than the index, watches the address keys themselves).
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(ikey), ">", 0)},
		[]clientv3.Op{clientv3.OpPut(ikey+releasedSuffix, rec)}, nil))
}

// ReleaseOwnAddress is ReleaseAddress for the node that allocated a: the
// node knows of its own release, so nothing else is written. It is one
// transaction, like the allocation.
//
// Releases and allocations that arrive while another of the store's is in
// flight go out together in one transaction (batch.go); the note of a
// batch names the node's coild as the releaser of each address it deletes.
func (s *Store) ReleaseOwnAddress(ctx context.Context, a Address) error {
	akey := s.addressKey(a.Pool, a.Subnet, a.Block, a.Offset)
	var err error
	op := &batchOp{
		ctx:    ctx,
		guards: []guard{{akey, a.Revision}},
		write:  clientv3.OpDelete(akey),
		key:    akey,
		note:   true,
		alone:  func(ctx context.Context) { err = s.releaseAddress(ctx, a) },
	}
	s.runBatched(op)
	if op.err != nil {
		return fmt.Errorf("release %v: %w", a.IPs(), op.err)
	}
	return err
}

func (s *Store) releaseAddress(ctx context.Context, a Address, also ...clientv3.Op) error {
	akey := s.addressKey(a.Pool, a.Subnet, a.Block, a.Offset)
	// Asked again after a lost answer, the delete finds the record gone
	// (or someone else's): the same answer as a late release.
	resp, _, err := s.commit(ctx, func(ctx context.Context) clientv3.Txn {
		return s.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(akey), "=", a.Revision)).
			Then(append(append([]clientv3.Op{clientv3.OpDelete(akey)}, also...), s.noteOps("")...)...).
			Else(clientv3.OpGet(akey, clientv3.WithCountOnly()))
	})
	if err != nil {
		return fmt.Errorf("release %v: %w", a.IPs(), err)
	}
	if resp.Succeeded || resp.Responses[0].GetResponseRange().Count == 0 {
		return nil
	}
	return fmt.Errorf("release %v: %w", a.IPs(), ErrNotOwner)
}

// BlockAddresses returns the addresses allocated in block b.
func (s *Store) BlockAddresses(ctx context.Context, b Block) ([]Address, error) {
	return s.listAddresses(ctx, s.blockAddressesPrefix(b.Pool, b.Subnet, b.Index))
}

// ListAddresses returns every address of every pool (pool "") or of one pool.
func (s *Store) ListAddresses(ctx context.Context, pool string) ([]Address, error) {
	prefix := s.addressesPrefix()
	if pool != "" {
		prefix += pool + "/"
	}
	return s.listAddresses(ctx, prefix)
}

func (s *Store) listAddresses(ctx context.Context, prefix string) ([]Address, error) {
	resp, err := s.kv.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", etcdErr("get", err))
	}
	addrs := make([]Address, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		a, err := s.DecodeAddress(string(kv.Key), kv.Value)
		if err != nil {
			// Skipped, not fatal. The key stays in etcd, so an
			// allocation of its offset fails with ErrAddressInUse and
			// the allocator leaves the offset marked used.
			s.reportCorrupt("addresses", string(kv.Key), err)
			continue
		}
		a.Revision = kv.CreateRevision
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// AddressInfo describes what holds one IP address.
type AddressInfo struct {
	IP      netip.Addr `json:"ip"`
	Pool    string     `json:"pool"`
	Block   *Block     `json:"block,omitempty"`
	Address *Address   `json:"address,omitempty"`
}

// FindAddress locates ip in the pools and returns its block and record
// (nil when the block is free or the address unallocated). ErrNotFound
// means no pool contains ip.
func (s *Store) FindAddress(ctx context.Context, ip netip.Addr) (AddressInfo, error) {
	pools, err := s.ListPools(ctx)
	if err != nil {
		return AddressInfo{}, err
	}
	for _, p := range pools {
		sub, blk, off, ok := p.Locate(ip)
		if !ok {
			continue
		}
		info := AddressInfo{IP: ip.Unmap(), Pool: p.Name}
		bkey := s.blockKey(p.Name, sub, blk)
		akey := s.addressKey(p.Name, sub, blk, off)
		resp, err := s.kv.Txn(ctx).Then(clientv3.OpGet(bkey), clientv3.OpGet(akey)).Commit()
		if err != nil {
			return AddressInfo{}, fmt.Errorf("find %s: %w", ip, etcdErr("get", err))
		}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			b, err := s.DecodeBlock(bkey, kvs[0].Value)
			if err != nil {
				return AddressInfo{}, err
			}
			b.Revision = kvs[0].CreateRevision
			info.Block = &b
		}
		if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
			a, err := s.DecodeAddress(akey, kvs[0].Value)
			if err != nil {
				return AddressInfo{}, err
			}
			a.Revision = kvs[0].CreateRevision
			info.Address = &a
		}
		return info, nil
	}
	return AddressInfo{}, fmt.Errorf("find %s: %w: no pool contains it", ip, ErrNotFound)
}

// encodeAddress is the JSON of an address record, byte for byte what
// encode (encoding/json) writes, without its reflection: every allocation
// encodes one.
func encodeAddress(a Address) string {
	if y := a.CreatedAt.Year(); y < 0 || y > 9999 {
		// encoding/json refuses such a time; let it say so.
		return encode(a)
	}
	b := make([]byte, 0, 320)
	b = append(b, `{"pool":`...)
	b = jsonappend.String(b, a.Pool)
	b = append(b, `,"subnet":`...)
	b = strconv.AppendInt(b, int64(a.Subnet), 10)
	b = append(b, `,"block":`...)
	b = strconv.AppendInt(b, int64(a.Block), 10)
	b = append(b, `,"offset":`...)
	b = strconv.AppendInt(b, int64(a.Offset), 10)
	if a.IPv4.IsValid() {
		b = append(b, `,"ipv4":`...)
		b = jsonappend.String(b, a.IPv4.String())
	}
	if a.IPv6.IsValid() {
		b = append(b, `,"ipv6":`...)
		b = jsonappend.String(b, a.IPv6.String())
	}
	b = append(b, `,"node":`...)
	b = jsonappend.String(b, a.Node)
	b = append(b, `,"namespace":`...)
	b = jsonappend.String(b, a.Namespace)
	b = append(b, `,"pod":`...)
	b = jsonappend.String(b, a.Pod)
	b = append(b, `,"containerID":`...)
	b = jsonappend.String(b, a.ContainerID)
	b = append(b, `,"interface":`...)
	b = jsonappend.String(b, a.Interface)
	for _, f := range [...]struct{ name, val string }{{`,"netns":`, a.NetNS}, {`,"podUID":`, a.PodUID}, {`,"network":`, a.Network}} {
		if f.val != "" {
			b = append(b, f.name...)
			b = jsonappend.String(b, f.val)
		}
	}
	b = append(b, `,"createdAt":"`...)
	b = a.CreatedAt.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `"}`...)
	return string(b)
}
