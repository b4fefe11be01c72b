package model

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Revision returns etcd's current revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	resp, err := s.kv.Get(ctx, s.schemaKey(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("read revision: %w", etcdErr("get", err))
	}
	return resp.Header.Revision, nil
}

// Released is a block or address record of a node deleted from etcd.
// Exactly one of Block and Address is set. Address holds the record as it
// was before the deletion, Revision included; Block names the block (pool,
// subnet, index, node) and its Revision, not its prefixes.
type Released struct {
	Block   *Block
	Address *Address
}

// ErrWatchBroken: a watch ended before its context did (etcd unreachable,
// the revision compacted): changes may have been missed, so the caller must
// read the state again before it watches from a new revision.
var ErrWatchBroken = errors.New("watch broken")
