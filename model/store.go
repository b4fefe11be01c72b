// Package model is Coil's state in etcd: pools, blocks, addresses, nodes
// and egresses, each record its own JSON key (docs/schema.md), each write a
// transaction guarded by compare-and-swap so concurrent writers never both
// win.
package model

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// SchemaVersion is the layout version this code reads and writes.
const SchemaVersion = 1

// Store reads and writes Coil's records under one key prefix.
type Store struct {
	kv      clientv3.KV
	watcher clientv3.Watcher
	lease   clientv3.Lease
	prefix  string
	// outcomeWait bounds how long a write whose answer was lost keeps
	// asking etcd what became of it (see commit).
	outcomeWait time.Duration
	hook        corruptHook
	// releaser, when set, signs this store's releases (history.go).
	releaser *Releaser
	// batch coalesces concurrent address writes (batch.go).
	batch batcher
	// blockProbes are the sizes of findFreeBlock's reads (blocks.go).
	blockProbes []int
}

// New returns a Store using the client's KV API under prefix (for example
// "/coil/"). Tests may replace cli.KV before calling New to observe requests.
func New(cli *clientv3.Client, prefix string) *Store {
	st := NewWithKV(cli.KV, prefix)
	st.watcher = cli.Watcher
	st.lease = cli.Lease
	return st
}

// NewWithKV is New for callers that only have a KV; such a store cannot
// watch nor hold a lease.
func NewWithKV(kv clientv3.KV, prefix string) *Store {
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Store{kv: kv, prefix: prefix, outcomeWait: defaultOutcomeWait, blockProbes: defaultBlockProbes}
}

// Prefix is the key prefix of the store.
func (s *Store) Prefix() string { return s.prefix }

func (s *Store) schemaKey() string          { return s.prefix + "schema" }
func (s *Store) poolsPrefix() string        { return s.prefix + "pools/" }
func (s *Store) poolKey(name string) string { return s.poolsPrefix() + name }
func (s *Store) blocksPrefix() string       { return s.prefix + "blocks/" }
func (s *Store) poolBlocksPrefix(pool string) string {
	return s.blocksPrefix() + pool + "/"
}
func (s *Store) blockKey(pool string, subnet, index int) string {
	return s.poolBlocksPrefix(pool) + strconv.Itoa(subnet) + "/" + strconv.Itoa(index)
}
func (s *Store) addressesPrefix() string { return s.prefix + "addresses/" }
func (s *Store) blockAddressesPrefix(pool string, subnet, index int) string {
	return s.addressesPrefix() + pool + "/" + strconv.Itoa(subnet) + "/" + strconv.Itoa(index) + "/"
}
func (s *Store) addressKey(pool string, subnet, index, offset int) string {
	return s.blockAddressesPrefix(pool, subnet, index) + strconv.Itoa(offset)
}
func (s *Store) nodesPrefix() string        { return s.prefix + "nodes/" }
func (s *Store) nodeKey(name string) string { return s.nodesPrefix() + name }

type schemaRecord struct {
	Version int `json:"version"`
}

// Init writes the schema version key if it is absent and refuses data
// written by a newer schema. Call it once at start-up.
func (s *Store) Init(ctx context.Context) error {
	val, _ := json.Marshal(schemaRecord{Version: SchemaVersion})
	key := s.schemaKey()
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		// A cluster created now keeps the node index from its first
		// block: new nodes need not scan for blocks (nodeindex.go).
		Then(clientv3.OpPut(key, string(val)), clientv3.OpPut(s.clusterIndexedKey(), encode(indexComplete{Since: time.Now().UTC()}))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return etcdErr("initialise schema", err)
	}
	if resp.Succeeded {
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil
	}
	var rec schemaRecord
	if err := json.Unmarshal(kvs[0].Value, &rec); err != nil {
		return fmt.Errorf("%w: schema key %s: %v", ErrCorrupt, key, err)
	}
	if rec.Version > SchemaVersion {
		return fmt.Errorf("%w: etcd holds schema %d, this Coil understands up to %d", ErrSchemaVersion, rec.Version, SchemaVersion)
	}
	return nil
}

func decode(key string, val []byte, v any) error {
	if err := json.Unmarshal(val, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, key, err)
	}
	return nil
}

func encode(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own plain structs are encoded; failure is a programming error.
		panic(fmt.Sprintf("encode %T: %v", v, err))
	}
	return string(b)
}
