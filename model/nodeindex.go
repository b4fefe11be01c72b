package model

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The node index: under nodeblocks/<node>/ one key per block the node
// owns, written and deleted in the very transactions that take and give
// back the block, so that a node finds its blocks, and follows what others
// do to them, by reading its own keys only: start-up and watches cost the
// same in a cluster of 10 nodes as in one of 5,000. The block keys stay the
// truth; the index is checked against them when read. See docs/schema.md.
//
//	nodeblocks/<node>/<pool>/<subnet>/<index>           {} or {"blockRevision":N}
//	nodeblocks/<node>/<pool>/<subnet>/<index>/released  {"revision":N,"address":{...}}
//	nodeblocks/<node>/.complete                         {"since":"..."}
//	nodeblocks/.indexed                                 {"since":"..."}

func (s *Store) nodeIndexPrefix() string { return s.prefix + "nodeblocks/" }
func (s *Store) nodeBlocksPrefix(node string) string {
	return s.nodeIndexPrefix() + node + "/"
}
func (s *Store) nodeBlockKey(node, pool string, subnet, index int) string {
	return s.nodeBlocksPrefix(node) + Block{Pool: pool, Subnet: subnet, Index: index}.ID()
}

// releasedSuffix is appended to a node's block index key for the key that
// tells the node an address of that block was released by someone else.
const releasedSuffix = "/released"

// completeKey marks a node's index as holding every block of the node. A
// pool name is a DNS-1123 label, so no block's key can take this name.
const completeKey = ".complete"

func (s *Store) nodeCompleteKey(node string) string { return s.nodeBlocksPrefix(node) + completeKey }

// indexedKey marks a cluster created by a Coil that keeps the index: Init
// writes it with the schema key, so every block of the cluster was taken
// with its index entry, and a node without .complete (one that never
// started before) has no block its index lacks: it need not scan every
// block of the cluster to find none. It sits under nodeblocks/ but in no
// node's part (it has no trailing slash), so deleting nodeblocks/ (see
// docs/schema.md, downgrading coild) removes it too and makes nodes scan.
const indexedKey = ".indexed"

func (s *Store) clusterIndexedKey() string { return s.nodeIndexPrefix() + indexedKey }

// indexEntry is the value of a node's block index key. BlockRevision is
// the block record's creation revision when the entry was written after
// the block (by the migration); zero means the entry was created with the
// block, so the entry's own creation revision is the block's.
type indexEntry struct {
	BlockRevision int64 `json:"blockRevision,omitempty"`
}

// releasedRecord is the value of a "released" key: the address record
// deleted, and its creation revision.
type releasedRecord struct {
	Revision int64           `json:"revision"`
	Address  json.RawMessage `json:"address"`
}

type indexComplete struct {
	Since time.Time `json:"since"`
}

// indexOps are the operations a transaction deleting block b adds to drop
// b from its node's index.
func (s *Store) indexDeleteOps(b Block) []clientv3.Op {
	ikey := s.nodeBlockKey(b.Node, b.Pool, b.Subnet, b.Index)
	return []clientv3.Op{clientv3.OpDelete(ikey), clientv3.OpDelete(ikey + releasedSuffix)}
}

// validNodeName refuses node names that would not stay inside their own
// part of the index.
func validNodeName(node string) error {
	if node == "" || strings.ContainsAny(node, "/\x00") || node == "." || node == ".." {
		return fmt.Errorf("%w: node name %q", ErrInvalidName, node)
	}
	return nil
}

// NodeBlocks returns the blocks owned by node, reading the node's index and
// the block records it names: two requests, whatever the size of the
// cluster. A node whose index is not marked complete (its blocks were
// taken by a coild older than the index) is found by scanning every block,
// unless the cluster was created with the index (indexedKey).
// It writes nothing; see OwnBlocks.
func (s *Store) NodeBlocks(ctx context.Context, node string) ([]Block, error) {
	return s.nodeBlocks(ctx, node, false)
}

// OwnBlocks is NodeBlocks for the node's own coild, which also keeps the
// index in repair: index entries whose block is gone or owned anew (left
// by a component older than the index) are dropped, and the index of a
// node not indexed yet is written from the scan, in one transaction
// guarded by the blocks' creation revisions, and marked complete, so the
// scan happens once per node (the migration of clusters older than the
// index, docs/schema.md).
func (s *Store) OwnBlocks(ctx context.Context, node string) ([]Block, error) {
	return s.nodeBlocks(ctx, node, true)
}

func (s *Store) nodeBlocks(ctx context.Context, node string, repair bool) ([]Block, error) {
	if err := validNodeName(node); err != nil {
		return nil, fmt.Errorf("blocks of node: %w", err)
	}
	resp, err := s.kv.Get(ctx, s.nodeBlocksPrefix(node), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("blocks of node %q: %w", node, etcdErr("read index", err))
	}
	complete := false
	type entry struct {
		key    string
		bkey   string
		rev    int64 // the block's creation revision
		modRev int64
	}
	var entries []entry
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		rest := strings.TrimPrefix(key, s.nodeBlocksPrefix(node))
		if rest == completeKey {
			complete = true
			continue
		}
		if strings.HasSuffix(rest, releasedSuffix) {
			continue
		}
		pool, sub, idx, err := s.parseIndexKey(node, key)
		if err != nil {
			s.reportCorrupt("nodeblocks", key, err)
			continue
		}
		var e indexEntry
		if err := decode(key, kv.Value, &e); err != nil {
			s.reportCorrupt("nodeblocks", key, err)
			continue
		}
		rev := e.BlockRevision
		if rev == 0 {
			rev = kv.CreateRevision
		}
		entries = append(entries, entry{key: key, bkey: s.blockKey(pool, sub, idx), rev: rev, modRev: kv.ModRevision})
	}
	if !complete {
		indexed, err := s.kv.Get(ctx, s.clusterIndexedKey(), clientv3.WithCountOnly())
		if err != nil {
			return nil, fmt.Errorf("blocks of node %q: %w", node, etcdErr("read index mark", err))
		}
		if indexed.Count == 0 {
			return s.scanNode(ctx, node, repair)
		}
		// A cluster indexed from its creation: the entries are all the
		// node's blocks. The node's coild marks its index complete, so
		// that its next start reads one key less.
		if repair {
			if _, err := s.kv.Put(ctx, s.nodeCompleteKey(node), encode(indexComplete{Since: time.Now().UTC()})); err != nil {
				return nil, fmt.Errorf("blocks of node %q: %w", node, etcdErr("mark index complete", err))
			}
		}
	}
	if len(entries) == 0 {
		return nil, nil
	}
	ops := make([]clientv3.Op, len(entries))
	for i, e := range entries {
		ops[i] = clientv3.OpGet(e.bkey)
	}
	bresp, err := s.kv.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("blocks of node %q: %w", node, etcdErr("read blocks", err))
	}
	var blocks []Block
	for i, e := range entries {
		kvs := bresp.Responses[i].GetResponseRange().Kvs
		if len(kvs) == 1 && kvs[0].CreateRevision == e.rev {
			b, err := s.DecodeBlock(e.bkey, kvs[0].Value)
			if err != nil {
				s.reportCorrupt("blocks", e.bkey, err)
				continue
			}
			if b.Node == node {
				b.Revision = kvs[0].CreateRevision
				blocks = append(blocks, b)
				continue
			}
		}
		// Stale: the block went without its entry (a component older
		// than the index released it). Dropped unless it changed since.
		if !repair {
			continue
		}
		key := e.key
		_, _ = s.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", e.modRev)).
			Then(clientv3.OpDelete(key), clientv3.OpDelete(key+releasedSuffix)).
			Commit()
	}
	return blocks, nil
}

// scanNode finds the blocks of node by scanning every block. With index,
// it writes the node's index and marks it complete in one transaction,
// provided none of the blocks changed meanwhile; a failed write is not an
// error: the next call scans again.
func (s *Store) scanNode(ctx context.Context, node string, index bool) ([]Block, error) {
	all, err := s.ListBlocks(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("blocks of node %q: %w", node, err)
	}
	var mine []Block
	var cmps []clientv3.Cmp
	ops := []clientv3.Op{clientv3.OpPut(s.nodeCompleteKey(node), encode(indexComplete{Since: time.Now().UTC()}))}
	for _, b := range all {
		if b.Node != node {
			continue
		}
		mine = append(mine, b)
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(s.blockKey(b.Pool, b.Subnet, b.Index)), "=", b.Revision))
		ops = append(ops, clientv3.OpPut(s.nodeBlockKey(node, b.Pool, b.Subnet, b.Index), encode(indexEntry{BlockRevision: b.Revision})))
	}
	if !index {
		return mine, nil
	}
	// Best effort: a lost race or an unreachable etcd leaves the node
	// unindexed, and the next start-up scans again.
	_, _ = s.kv.Txn(ctx).If(cmps...).Then(ops...).Commit()
	return mine, nil
}

// parseIndexKey splits a node's block index key into the block's place.
func (s *Store) parseIndexKey(node, key string) (pool string, subnet, index int, err error) {
	parts, err := keyParts(key, s.nodeBlocksPrefix(node), 3)
	if err != nil {
		return "", 0, 0, err
	}
	if subnet, err = keyIndex(key, parts[1]); err != nil {
		return "", 0, 0, err
	}
	if index, err = keyIndex(key, parts[2]); err != nil {
		return "", 0, 0, err
	}
	return parts[0], subnet, index, nil
}

// WatchNodeReleases calls fn for each block of node released and each
// address of node's blocks released by someone else after revision rev,
// in order, until ctx ends (it then returns ctx's cause) or the watch
// breaks (an error wrapping ErrWatchBroken).
//
// It watches the node's index only, so a node hears of its own blocks and
// nothing else: a block release deletes the block's index key, and a
// release of an address by anyone but the node (ReleaseAddress; the node
// itself uses ReleaseOwnAddress) writes the block's "released" key in the
// same transaction.
func (s *Store) WatchNodeReleases(ctx context.Context, node string, rev int64, fn func(Released)) error {
	if s.watcher == nil {
		return fmt.Errorf("watch releases of node %q: store has no watcher", node)
	}
	if err := validNodeName(node); err != nil {
		return fmt.Errorf("watch releases: %w", err)
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	ch := s.watcher.Watch(wctx, s.nodeBlocksPrefix(node), clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV())
	for resp := range ch {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch releases of node %q: %w: %w", node, ErrWatchBroken, err)
		}
		for _, ev := range resp.Events {
			r, ok, err := s.parseIndexEvent(node, ev)
			if err != nil {
				return fmt.Errorf("watch releases of node %q: %w: %w", node, ErrWatchBroken, err)
			}
			if ok {
				fn(r)
			}
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("watch releases of node %q: %w", node, context.Cause(ctx))
	}
	return fmt.Errorf("watch releases of node %q: %w: channel closed", node, ErrWatchBroken)
}

// parseIndexEvent turns an event of a node's index into a release: the
// deletion of a block's entry, or a write of a block's "released" key.
// Other events (entries created, the completion mark, "released" keys
// deleted with their block) are not releases.
func (s *Store) parseIndexEvent(node string, ev *clientv3.Event) (Released, bool, error) {
	key := string(ev.Kv.Key)
	switch {
	case ev.Type == clientv3.EventTypePut && strings.HasSuffix(key, releasedSuffix):
		pool, sub, idx, err := s.parseIndexKey(node, strings.TrimSuffix(key, releasedSuffix))
		if err != nil {
			s.reportCorrupt("nodeblocks", key, err)
			return Released{}, false, nil
		}
		var rec releasedRecord
		var probe Address
		if err := decode(key, ev.Kv.Value, &rec); err != nil || decode(key, rec.Address, &probe) != nil {
			s.reportCorrupt("nodeblocks", key, corruptf(key, "not a released address"))
			return Released{}, false, nil
		}
		akey := s.addressKey(pool, sub, idx, probe.Offset)
		a, err := s.DecodeAddress(akey, rec.Address)
		if err != nil || a.Node != node {
			s.reportCorrupt("nodeblocks", key, corruptf(key, "released address is not of this block and node"))
			return Released{}, false, nil
		}
		a.Revision = rec.Revision
		return Released{Address: &a}, true, nil
	case ev.Type == clientv3.EventTypeDelete && !strings.HasSuffix(key, releasedSuffix) &&
		strings.TrimPrefix(key, s.nodeBlocksPrefix(node)) != completeKey:
		if ev.PrevKv == nil {
			// The entry is not known (compacted meanwhile): only a fresh
			// read tells which block went.
			return Released{}, false, fmt.Errorf("deletion of %s without its record", key)
		}
		pool, sub, idx, err := s.parseIndexKey(node, key)
		if err != nil {
			return Released{}, false, nil
		}
		var e indexEntry
		if decode(key, ev.PrevKv.Value, &e) != nil {
			return Released{}, false, nil
		}
		rev := e.BlockRevision
		if rev == 0 {
			rev = ev.PrevKv.CreateRevision
		}
		return Released{Block: &Block{Pool: pool, Subnet: sub, Index: idx, Node: node, Revision: rev}}, true, nil
	}
	return Released{}, false, nil
}
