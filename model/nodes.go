package model

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Node is what other nodes need to route to a node's blocks.
type Node struct {
	Name      string       `json:"name"`
	Addresses []netip.Addr `json:"addresses"`
	UpdatedAt time.Time    `json:"updatedAt"`
}

// PutNode creates or replaces a node record.
func (s *Store) PutNode(ctx context.Context, n Node) error {
	if n.Name == "" {
		return fmt.Errorf("put node: %w: empty name", ErrInvalidName)
	}
	n.UpdatedAt = time.Now().UTC()
	if _, err := s.kv.Put(ctx, s.nodeKey(n.Name), encode(n)); err != nil {
		return fmt.Errorf("put node %q: %w", n.Name, etcdErr("put", err))
	}
	return nil
}

// GetNode returns a node record or ErrNotFound.
func (s *Store) GetNode(ctx context.Context, name string) (Node, error) {
	key := s.nodeKey(name)
	resp, err := s.kv.Get(ctx, key)
	if err != nil {
		return Node{}, fmt.Errorf("get node %q: %w", name, etcdErr("get", err))
	}
	if len(resp.Kvs) == 0 {
		return Node{}, fmt.Errorf("get node %q: %w", name, ErrNotFound)
	}
	return s.DecodeNode(key, resp.Kvs[0].Value)
}

// ListNodes returns every node record.
func (s *Store) ListNodes(ctx context.Context) ([]Node, error) {
	resp, err := s.kv.Get(ctx, s.nodesPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", etcdErr("get", err))
	}
	nodes := make([]Node, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		n, err := s.DecodeNode(string(kv.Key), kv.Value)
		if err != nil {
			s.reportCorrupt("nodes", string(kv.Key), err)
			continue
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// DeleteNode removes a node record, and what is left of its block index
// (the completion mark; the entries go with the blocks); absent is not an
// error. Should the node come back, its coild rebuilds the index.
func (s *Store) DeleteNode(ctx context.Context, name string) error {
	ops := []clientv3.Op{clientv3.OpDelete(s.nodeKey(name))}
	if validNodeName(name) == nil {
		ops = append(ops, clientv3.OpDelete(s.nodeBlocksPrefix(name), clientv3.WithPrefix()))
	}
	if _, err := s.kv.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("delete node %q: %w", name, etcdErr("delete", err))
	}
	return nil
}
