package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// allocResults is part 1: raw etcd against coild's REST API.
type allocResults struct {
	etcd etcdStatus
	// By concurrency level, in the order of opts.clients.
	rawCreate, rawDelete         []phaseResult
	guardedCreate, guardedDelete []phaseResult
	coildAlloc, coildRelease     []phaseResult
	allocKV, releaseKV           []kvCounts
	// cold is the fill that took the blocks the HTTP phases then use:
	// requests per allocation including block acquisitions.
	cold        kvCounts
	coldAllocs  int
	coldBlocks  int
	blockSize   int
	poolSubnet  string
	transport   string
	valueLength int
}

const (
	allocPrefix = "/coil-bench/"
	rawPrefix   = "/raw-bench/addresses/default/"
	benchNS     = "bench"
)

// fixedPool sends every namespace to the default pool: the benchmark
// measures the allocation path, not the namespace lookup (an informer
// cache read in coild).
type fixedPool struct{}

func (fixedPool) PoolFor(context.Context, string) (string, error) { return "default", nil }

func runAllocBench(ctx context.Context, o *options, tmp string, cl *cleanups, res *results) error {
	logf("part 1: allocation throughput, raw etcd against coild (phases of %v, clients %v)", o.phase, o.clients)
	etcd, err := startEtcd(ctx, o.etcdBin, tmp, "alloc", cl)
	if err != nil {
		return err
	}
	defer etcd.Stop()
	cli, err := etcd.Client()
	if err != nil {
		return err
	}
	defer cli.Close()

	ar := &allocResults{blockSize: 1 << o.blockBits, transport: "HTTP over a unix socket, one keep-alive connection per client"}
	res.alloc = ar

	// A value as large as coild's address record, so both write the same bytes.
	sample := model.Address{
		Pool: "default", Subnet: 0, Block: 1234, Offset: 17,
		IPv4: netip.MustParseAddr("10.64.154.81"),
		Owner: model.Owner{Node: "node-0001", Namespace: benchNS, Pod: "p-16-15-12345",
			ContainerID: "c1-15-12345", Interface: "eth0"},
		CreatedAt: time.Now().UTC(),
	}
	value, _ := json.Marshal(sample)
	ar.valueLength = len(value)

	// coild: the real REST handler over a real allocator and store.
	kv := newCountingKV(cli.KV, allocPrefix)
	// Room for 16 clients at twice the first measurement's raw rate.
	ar.poolSubnet = poolSubnetFor(int(2*refRaw16*o.phase.Seconds())*o.rounds+1<<16, "10.64.0.0")
	alloc, err := benchAllocator(ctx, kv, allocPrefix, ar.poolSubnet, o.blockBits)
	if err != nil {
		return err
	}
	sock := filepath.Join(tmp, "coild-alloc.sock")
	if err := serveREST(alloc, sock, cl); err != nil {
		return err
	}

	// For each concurrency level, rounds of raw etcd then coild, so that
	// drift of the disk or the machine weighs on both alike.
	// The block key coild's transactions compare, for the guarded raw side.
	blockGuard := rawItem{key: "/raw-bench/blocks/default/0/0"}
	if resp, err := cli.Put(ctx, blockGuard.key, `{"node":"bench-node"}`); err != nil {
		return err
	} else {
		blockGuard.rev = resp.Header.Revision
	}
	maxOps := int(refRaw16 * o.phase.Seconds())
	phase := 0
	for _, c := range o.clients {
		clients := make([]*api.Client, c)
		for i := range clients {
			if clients[i], err = api.NewClient("unix://"+sock, api.WithTimeout(30*time.Second)); err != nil {
				return err
			}
		}
		var rawC, rawD, guC, guD, coC, coD []phaseResult
		var allocKV, releaseKV kvCounts
		for round := range o.rounds {
			// A node owns its blocks long before most of its allocations:
			// make sure it owns enough for what raw etcd managed so far
			// (coild sends the same transaction, so it cannot do more),
			// then free the addresses again. Blocks stay owned, as they do
			// on a node between pods.
			if err := ensureBlocks(ctx, alloc, kv, maxOps*13/10, ar); err != nil {
				return err
			}
			if err := compact(ctx, cli); err != nil {
				return err
			}
			// The order of the sides turns from round to round.
			for side := range 3 {
				switch (side + round) % 3 {
				case 0, 1:
					// Raw etcd: create-if-absent on one key per operation,
					// then the guarded delete of each, as model does for an
					// address; "guarded" adds coild's second compare (the
					// block key still has its creation revision).
					guarded := (side+round)%3 == 1
					var guard *rawItem
					if guarded {
						guard = &blockGuard
					}
					m := startCPU(etcd.PID())
					created, create, err := rawCreatePhase(ctx, cli, c, phase, o.phase, string(value), guard)
					if err != nil {
						return fmt.Errorf("raw create, %d clients: %w", c, err)
					}
					create.cpu = m.stop()
					m = startCPU(etcd.PID())
					del, err := rawDeletePhase(ctx, cli, created)
					if err != nil {
						return fmt.Errorf("raw delete, %d clients: %w", c, err)
					}
					del.cpu = m.stop()
					if guarded {
						guC, guD = append(guC, create), append(guD, del)
					} else {
						rawC, rawD = append(rawC, create), append(rawD, del)
						maxOps = max(maxOps, create.ops)
					}
				case 2:
					before := kv.snapshot()
					m := startCPU(etcd.PID())
					owned, a, err := coildAllocPhase(ctx, clients, phase, o.phase)
					if err != nil {
						return fmt.Errorf("coild POST /ip, %d clients: %w", c, err)
					}
					a.cpu = m.stop()
					mid := kv.snapshot()
					m = startCPU(etcd.PID())
					r, err := coildReleasePhase(ctx, clients, owned)
					if err != nil {
						return fmt.Errorf("coild DELETE /ip, %d clients: %w", c, err)
					}
					r.cpu = m.stop()
					after := kv.snapshot()
					coC, coD = append(coC, a), append(coD, r)
					allocKV = allocKV.add(mid.sub(before))
					releaseKV = releaseKV.add(after.sub(mid))
				}
				phase++
				if err := compact(ctx, cli); err != nil {
					return err
				}
			}
		}
		ar.guardedCreate = append(ar.guardedCreate, mergePhases(guC))
		ar.guardedDelete = append(ar.guardedDelete, mergePhases(guD))
		create, del, a, r := mergePhases(rawC), mergePhases(rawD), mergePhases(coC), mergePhases(coD)
		ar.rawCreate = append(ar.rawCreate, create)
		ar.rawDelete = append(ar.rawDelete, del)
		ar.coildAlloc = append(ar.coildAlloc, a)
		ar.coildRelease = append(ar.coildRelease, r)
		ar.allocKV = append(ar.allocKV, allocKV)
		ar.releaseKV = append(ar.releaseKV, releaseKV)
		logf("  %2d clients: raw create %s p50 %s p99 %s | coild POST %s p50 %s p99 %s (%.3f etcd req/alloc) | delete raw %s coild %s",
			c, fmtRate(create.rate()), fmtDur(create.p50), fmtDur(create.p99),
			fmtRate(a.rate()), fmtDur(a.p50), fmtDur(a.p99), float64(allocKV.requests)/float64(max(a.ops, 1)),
			fmtRate(del.rate()), fmtRate(r.rate()))
	}
	ar.etcd, err = etcd.status(ctx, cli)
	return err
}

// ensureBlocks makes the allocator own blocks for at least n addresses by
// allocating n addresses (free ones of owned blocks first, new blocks for
// the rest) and releasing them. What it costs in etcd requests is the cost
// of allocating with block acquisitions, kept in ar.
// benchAllocator returns the allocator of the bench's one coild node,
// restored over a fresh store under prefix (through kv, which counts its
// requests) holding one pool of subnet.
func benchAllocator(ctx context.Context, kv *countingKV, prefix, subnet string, blockBits int) (*ipam.Allocator, error) {
	st := model.NewWithKV(kv, prefix)
	if _, err := initPool(ctx, st, subnet, blockBits); err != nil {
		return nil, err
	}
	alloc := ipam.New(st, "bench-node", nil)
	if err := alloc.Restore(ctx); err != nil {
		return nil, err
	}
	return alloc, nil
}

// initPool initialises a fresh store and creates the bench's one pool,
// "default", over subnet with blocks of blockBits.
func initPool(ctx context.Context, st *model.Store, subnet string, blockBits int) (model.Pool, error) {
	if err := st.Init(ctx); err != nil {
		return model.Pool{}, err
	}
	sub, err := model.ParseSubnet(subnet, "")
	if err != nil {
		return model.Pool{}, fmt.Errorf("bench pool subnet %q: %w", subnet, err)
	}
	pool := model.Pool{Name: "default", BlockSizeBits: blockBits, Subnets: []model.Subnet{sub}}
	if err := st.CreatePool(ctx, pool); err != nil {
		return model.Pool{}, err
	}
	return pool, nil
}

func ensureBlocks(ctx context.Context, alloc *ipam.Allocator, kv *countingKV, n int, ar *allocResults) error {
	blocks, _ := alloc.Usage()
	if blocks*ar.blockSize >= n {
		return nil
	}
	before := kv.snapshot()
	atts, err := warmUp(ctx, alloc, n)
	if err != nil {
		return fmt.Errorf("take blocks: %w", err)
	}
	ar.cold = ar.cold.add(kv.snapshot().sub(before))
	ar.coldAllocs += n
	if err := cooldown(ctx, alloc, atts); err != nil {
		return fmt.Errorf("free the addresses of the fill: %w", err)
	}
	now, _ := alloc.Usage()
	ar.coldBlocks += now - blocks
	debugf("  coild owns %d blocks now", now)
	return nil
}

// poolSubnetFor returns the smallest IPv4 subnet at base holding n addresses.
func poolSubnetFor(n int, base string) string {
	bits := 32
	for bits > 8 && 1<<(32-bits) < n {
		bits--
	}
	return fmt.Sprintf("%s/%d", base, bits)
}

// rawItem is one key written by a raw worker and the revision that created it.
type rawItem struct {
	key string
	rev int64
}

// rawCreatePhase runs clients workers for d, each creating keys of its own
// with create-if-absent transactions on one shared client (coild, too, has
// one etcd client for all its requests).
func rawCreatePhase(ctx context.Context, cli *clientv3.Client, clients, phase int, d time.Duration, value string, guard *rawItem) ([][]rawItem, phaseResult, error) {
	created := make([][]rawItem, clients)
	res, err := timedPhase(ctx, clients, d, func(w, i int) error {
		key := fmt.Sprintf("%s%d/%d/%d", rawPrefix, phase, w, i)
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}
		if guard != nil {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(guard.key), "=", guard.rev))
		}
		resp, err := cli.Txn(ctx).
			If(cmps...).
			Then(clientv3.OpPut(key, value)).
			Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			return fmt.Errorf("key %s exists", key)
		}
		created[w] = append(created[w], rawItem{key, resp.Header.Revision})
		return nil
	})
	return created, res, err
}

// rawDeletePhase deletes every key created, each worker its own, guarded
// by the creation revision like model.ReleaseOwnAddress.
func rawDeletePhase(ctx context.Context, cli *clientv3.Client, created [][]rawItem) (phaseResult, error) {
	return countedPhase(ctx, len(created), func(w int) int { return len(created[w]) }, func(w, i int) error {
		it := created[w][i]
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(it.key), "=", it.rev)).
			Then(clientv3.OpDelete(it.key)).
			Else(clientv3.OpGet(it.key, clientv3.WithCountOnly())).
			Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			return fmt.Errorf("key %s changed under the benchmark", it.key)
		}
		return nil
	})
}

// podRef names what a coild client allocated, to release it again.
type podRef struct {
	name, cid string
}

func coildAllocPhase(ctx context.Context, clients []*api.Client, phase int, d time.Duration) ([][]podRef, phaseResult, error) {
	owned := make([][]podRef, len(clients))
	res, err := timedPhase(ctx, len(clients), d, func(w, i int) error {
		p := podRef{name: fmt.Sprintf("p-%d-%d-%d", phase, w, i), cid: fmt.Sprintf("c%d-%d-%d", phase, w, i)}
		_, err := clients[w].Allocate(ctx, api.AllocRequest{
			PodNamespace: benchNS, PodName: p.name, ContainerID: p.cid, Interface: "eth0",
		})
		if err != nil {
			return err
		}
		owned[w] = append(owned[w], p)
		return nil
	})
	return owned, res, err
}

func coildReleasePhase(ctx context.Context, clients []*api.Client, owned [][]podRef) (phaseResult, error) {
	return countedPhase(ctx, len(clients), func(w int) int { return len(owned[w]) }, func(w, i int) error {
		p := owned[w][i]
		return clients[w].Release(ctx, benchNS, p.name, api.Attachment{ContainerID: p.cid, Interface: "eth0"})
	})
}

// warmUp allocates n addresses through the allocator, 16 at a time, and
// returns the attachments to release again.
func warmUp(ctx context.Context, alloc *ipam.Allocator, n int) ([]api.Attachment, error) {
	const workers = 16
	atts := make([][]api.Attachment, workers)
	_, err := countedPhase(ctx, workers, func(w int) int { return (n - w + workers - 1) / workers }, func(w, i int) error {
		cid := fmt.Sprintf("warm-%d-%d", w, i)
		if _, err := alloc.Allocate(ctx, "default", model.Owner{Namespace: benchNS, Pod: cid, ContainerID: cid, Interface: "eth0"}); err != nil {
			return err
		}
		atts[w] = append(atts[w], api.Attachment{ContainerID: cid, Interface: "eth0"})
		return nil
	})
	var all []api.Attachment
	for _, a := range atts {
		all = append(all, a...)
	}
	return all, err
}

// cooldown releases what warmUp allocated; the blocks stay with the node.
func cooldown(ctx context.Context, alloc *ipam.Allocator, atts []api.Attachment) error {
	const workers = 16
	_, err := countedPhase(ctx, workers, func(w int) int { return (len(atts) - w + workers - 1) / workers }, func(w, i int) error {
		_, _, err := alloc.Release(ctx, atts[w+workers*i])
		return err
	})
	return err
}

// timedPhase runs clients workers calling op(worker, i) for i = 0, 1, ...
// until d has passed, and measures every call. The first error stops the
// phase: a benchmark that fails requests measures nothing useful.
func timedPhase(ctx context.Context, clients int, d time.Duration, op func(w, i int) error) (phaseResult, error) {
	deadline := time.Now().Add(d)
	return runWorkers(ctx, clients, func(w, i int) bool { return time.Now().Before(deadline) }, op)
}

// countedPhase runs op(worker, i) for i below n(worker) in each worker.
func countedPhase(ctx context.Context, clients int, n func(w int) int, op func(w, i int) error) (phaseResult, error) {
	return runWorkers(ctx, clients, func(w, i int) bool { return i < n(w) }, op)
}

func runWorkers(ctx context.Context, clients int, more func(w, i int) bool, op func(w, i int) error) (phaseResult, error) {
	lats := make([]latencies, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; more(w, i); i++ {
				if err := ctx.Err(); err != nil {
					errs[w] = err
					return
				}
				t0 := time.Now()
				if err := op(w, i); err != nil {
					errs[w] = err
					return
				}
				lats[w] = append(lats[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return phaseResult{}, err
	}
	var all latencies
	for _, l := range lats {
		all = append(all, l...)
	}
	return newPhaseResult(clients, elapsed, all, 0), nil
}
