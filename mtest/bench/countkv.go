package main

import (
	"context"
	"strings"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
)

// countingKV wraps the KV a model.Store uses and counts every request it
// sends to etcd, by kind, telling the store's transactions apart by the
// keys they write: a transaction that puts a block key is a block
// acquisition, one that puts only an address key an address allocation.
// A transaction that did not succeed is a lost race (or a guard that
// fired), counted per kind. A store coalesces the address writes that
// arrive together into one transaction: such a transaction counts one
// request and each of its address writes (addrAlloc, addrRelease), and
// a batch that failed (its writes then go again alone) counts once in
// addrAllocLost and in batchesFailed.
type countingKV struct {
	clientv3.KV
	blocksPart    string // "/blocks/" below the store prefix
	addressesPart string

	requests atomic.Int64
	gets     atomic.Int64
	puts     atomic.Int64
	deletes  atomic.Int64
	txns     atomic.Int64

	blockAcquire     atomic.Int64 // committed block acquisitions
	blockAcquireLost atomic.Int64 // acquisition transactions that failed their guard
	addrAlloc        atomic.Int64
	addrAllocLost    atomic.Int64
	addrRelease      atomic.Int64
	blockRelease     atomic.Int64
	blockReleaseLost atomic.Int64
	blockListings    atomic.Int64 // range requests over a blocks prefix
	// Block keys a search for a free block read: the keys a listing of
	// a pool's blocks returned, and the keys a read-only transaction of
	// count-only gets probed.
	blockKeysSearched atomic.Int64
	batches           atomic.Int64 // transactions with more than one address write
	batchesFailed     atomic.Int64 // of which failed (every write sent again alone)
	batchedAllocs     atomic.Int64 // allocations committed by such transactions
}

func newCountingKV(kv clientv3.KV, prefix string) *countingKV {
	return &countingKV{KV: kv, blocksPart: prefix + "blocks/", addressesPart: prefix + "addresses/"}
}

// kvCounts is a snapshot of the counters.
type kvCounts struct {
	requests, gets, puts, deletes, txns           int64
	blockAcquire, blockAcquireLost                int64
	addrAlloc, addrAllocLost, addrRelease         int64
	blockRelease, blockReleaseLost, blockListings int64
	blockKeysSearched                             int64
	batches, batchesFailed, batchedAllocs         int64
}

func (c *countingKV) snapshot() kvCounts {
	return kvCounts{
		requests: c.requests.Load(), gets: c.gets.Load(), puts: c.puts.Load(),
		deletes: c.deletes.Load(), txns: c.txns.Load(),
		blockAcquire: c.blockAcquire.Load(), blockAcquireLost: c.blockAcquireLost.Load(),
		addrAlloc: c.addrAlloc.Load(), addrAllocLost: c.addrAllocLost.Load(),
		addrRelease:  c.addrRelease.Load(),
		blockRelease: c.blockRelease.Load(), blockReleaseLost: c.blockReleaseLost.Load(),
		blockListings: c.blockListings.Load(), blockKeysSearched: c.blockKeysSearched.Load(),
		batches: c.batches.Load(), batchesFailed: c.batchesFailed.Load(), batchedAllocs: c.batchedAllocs.Load(),
	}
}

// keysPerAcquisition is how many block keys a block acquisition read,
// counting the attempts that lost their race.
func (a kvCounts) keysPerAcquisition() float64 {
	return float64(a.blockKeysSearched) / float64(max(a.blockAcquire+a.blockAcquireLost, 1))
}

func (a kvCounts) sub(b kvCounts) kvCounts {
	return kvCounts{
		requests: a.requests - b.requests, gets: a.gets - b.gets, puts: a.puts - b.puts,
		deletes: a.deletes - b.deletes, txns: a.txns - b.txns,
		blockAcquire: a.blockAcquire - b.blockAcquire, blockAcquireLost: a.blockAcquireLost - b.blockAcquireLost,
		addrAlloc: a.addrAlloc - b.addrAlloc, addrAllocLost: a.addrAllocLost - b.addrAllocLost,
		addrRelease:  a.addrRelease - b.addrRelease,
		blockRelease: a.blockRelease - b.blockRelease, blockReleaseLost: a.blockReleaseLost - b.blockReleaseLost,
		blockListings: a.blockListings - b.blockListings, blockKeysSearched: a.blockKeysSearched - b.blockKeysSearched,
		batches: a.batches - b.batches, batchesFailed: a.batchesFailed - b.batchesFailed,
		batchedAllocs: a.batchedAllocs - b.batchedAllocs,
	}
}

func (a kvCounts) add(b kvCounts) kvCounts {
	var zero kvCounts
	return a.sub(zero.sub(b))
}

func (c *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	c.requests.Add(1)
	c.gets.Add(1)
	resp, err := c.KV.Get(ctx, key, opts...)
	if strings.HasPrefix(key, c.blocksPart) {
		c.blockListings.Add(1)
		if op := clientv3.OpGet(key, opts...); err == nil && op.IsOptsWithPrefix() && op.IsKeysOnly() {
			c.blockKeysSearched.Add(int64(len(resp.Kvs)))
		}
	}
	return resp, err
}

func (c *countingKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	c.requests.Add(1)
	c.puts.Add(1)
	return c.KV.Put(ctx, key, val, opts...)
}

func (c *countingKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	c.requests.Add(1)
	c.deletes.Add(1)
	return c.KV.Delete(ctx, key, opts...)
}

func (c *countingKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	c.requests.Add(1)
	return c.KV.Do(ctx, op)
}

func (c *countingKV) Txn(ctx context.Context) clientv3.Txn {
	return etcdtest.HookTxn(c.KV.Txn(ctx), c.commit)
}

// commit counts a transaction when it is committed (one request), and
// what it wrote when it succeeded.
func (c *countingKV) commit(then []clientv3.Op, send func() (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
	c.requests.Add(1)
	c.txns.Add(1)
	resp, err := send()
	if err != nil {
		return resp, err
	}
	var putBlock, delBlock bool
	var putAddr, delAddr int64
	for _, op := range then {
		key := string(op.KeyBytes())
		switch {
		case op.IsGet() && op.IsCountOnly() && strings.HasPrefix(key, c.blocksPart):
			c.blockKeysSearched.Add(1)
		case op.IsPut() && strings.HasPrefix(key, c.blocksPart):
			putBlock = true
		case op.IsPut() && strings.HasPrefix(key, c.addressesPart):
			putAddr++
		case op.IsDelete() && strings.HasPrefix(key, c.blocksPart):
			delBlock = true
		case op.IsDelete() && strings.HasPrefix(key, c.addressesPart):
			delAddr++
		}
	}
	ok := resp.Succeeded
	if !putBlock && !delBlock && putAddr+delAddr > 1 {
		c.batches.Add(1)
		if !ok {
			c.batchesFailed.Add(1)
		} else {
			c.batchedAllocs.Add(putAddr)
		}
	}
	switch {
	case putBlock:
		count(ok, &c.blockAcquire, &c.blockAcquireLost)
	case delBlock:
		count(ok, &c.blockRelease, &c.blockReleaseLost)
	case putAddr > 0 && ok:
		c.addrAlloc.Add(putAddr)
		c.addrRelease.Add(delAddr)
	case putAddr > 0:
		c.addrAllocLost.Add(1)
	case delAddr > 0 && ok:
		c.addrRelease.Add(delAddr)
	}
	return resp, nil
}

func count(ok bool, won, lost *atomic.Int64) {
	if ok {
		won.Add(1)
	} else {
		lost.Add(1)
	}
}
