package model_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/coil-project/coil/model"
)

// TestStampCluster: the first caller stamps the prefix with its cluster's
// UID; the same cluster passes; another cluster is refused with both UIDs
// named and changes nothing; bad input changes nothing.
func TestStampCluster(t *testing.T) {
	ctx := context.Background()
	st, cli := newStore(t)
	if _, err := st.GetCluster(ctx); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("GetCluster on an unstamped prefix = %v, want ErrNotFound", err)
	}
	first, err := st.StampCluster(ctx, "uid-a")
	if err != nil {
		t.Fatal(err)
	}
	if first.UID != "uid-a" || first.StampedAt.IsZero() {
		t.Fatalf("stamp = %+v", first)
	}

	tests := []struct {
		name    string
		uid     string
		want    error
		wantMsg []string
	}{
		{name: "same cluster", uid: "uid-a"},
		{name: "other cluster", uid: "uid-b", want: model.ErrClusterMismatch, wantMsg: []string{"uid-a", "uid-b"}},
		{name: "empty UID", uid: "", want: model.ErrInvalidCluster},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := dump(t, cli, st.Prefix())
			got, err := st.StampCluster(ctx, tc.uid)
			if !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Fatalf("StampCluster(%q) = %v, want %v", tc.uid, err, tc.want)
			}
			for _, m := range tc.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not name %s", err, m)
				}
			}
			if err == nil && got != first {
				t.Errorf("stamp = %+v, want the first one %+v", got, first)
			}
			if after := dump(t, cli, st.Prefix()); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("etcd changed:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
	if got, err := st.GetCluster(ctx); err != nil || got != first {
		t.Fatalf("GetCluster = %+v, %v; want %+v", got, err, first)
	}

	// A value that does not decode is reported, never overwritten.
	if _, err := cli.Put(ctx, st.Prefix()+"cluster", "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.StampCluster(ctx, "uid-a"); !errors.Is(err, model.ErrCorrupt) {
		t.Fatalf("StampCluster over a corrupt stamp = %v, want ErrCorrupt", err)
	}
	if _, err := st.GetCluster(ctx); !errors.Is(err, model.ErrCorrupt) {
		t.Fatalf("GetCluster of a corrupt stamp = %v, want ErrCorrupt", err)
	}
}

// TestStampClusterRace: components of two clusters starting at once
// against one fresh prefix: exactly one stamp wins, every caller of the
// other cluster is refused.
func TestStampClusterRace(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	const perCluster = 8
	var wg sync.WaitGroup
	errs := make(chan error, 2*perCluster)
	won := make(chan string, 2*perCluster)
	for i := range 2 * perCluster {
		uid := fmt.Sprintf("uid-%d", i%2)
		wg.Go(func() {
			c, err := st.StampCluster(ctx, uid)
			if err != nil {
				errs <- err
				return
			}
			won <- c.UID
		})
	}
	wg.Wait()
	close(errs)
	close(won)
	winners := map[string]int{}
	for uid := range won {
		winners[uid]++
	}
	if len(winners) != 1 {
		t.Fatalf("callers of %d clusters succeeded: %v", len(winners), winners)
	}
	n := 0
	for err := range errs {
		n++
		if !errors.Is(err, model.ErrClusterMismatch) {
			t.Errorf("loser got %v, want ErrClusterMismatch", err)
		}
	}
	if n != perCluster {
		t.Errorf("%d callers refused, want %d", n, perCluster)
	}
}
