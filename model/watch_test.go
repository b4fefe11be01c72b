package model_test

import (
	"context"
	"testing"
	"time"

	"github.com/coil-project/coil/model"
)

func TestWatchPoolsAndTopology(t *testing.T) {
	st, _ := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	pools := make(chan []model.Pool, 16)
	topo := make(chan model.Topology, 16)
	done := make(chan struct{}, 2)
	go func() {
		st.WatchPools(ctx, 100*time.Millisecond, func(p []model.Pool) { pools <- p })
		done <- struct{}{}
	}()
	go func() {
		st.WatchTopology(ctx, 10*time.Millisecond, 100*time.Millisecond, func(tp model.Topology) { topo <- tp })
		done <- struct{}{}
	}()
	wait := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for !ok() {
			select {
			case <-deadline:
				t.Fatalf("timed out waiting for %s", what)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	var lastPools []model.Pool
	var lastTopo model.Topology
	drain := func() {
		for {
			select {
			case p := <-pools:
				lastPools = p
			case tp := <-topo:
				lastTopo = tp
			default:
				return
			}
		}
	}
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.30.0.0/24", "")}}); err != nil {
		t.Fatal(err)
	}
	wait("pool event", func() bool { drain(); return len(lastPools) == 1 })
	if _, _, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n1", ContainerID: "c"}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutNode(ctx, model.Node{Name: "n1"}); err != nil {
		t.Fatal(err)
	}
	wait("topology event", func() bool { drain(); return len(lastTopo.Blocks) == 1 && len(lastTopo.Nodes) == 1 })
	cancel()
	<-done
	<-done
}
