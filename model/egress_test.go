package model_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coil-project/coil/model"
)

func mustPrefixes(t *testing.T, ss ...string) []netip.Prefix {
	t.Helper()
	ps, err := model.ParseDestinations(ss)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func TestEgressValidate(t *testing.T) {
	dst := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	tests := []struct {
		name string
		e    model.Egress
		want error
	}{
		{"ok", model.Egress{Namespace: "internet", Name: "nat", Destinations: dst}, nil},
		{"dual", model.Egress{Namespace: "a", Name: "b", Destinations: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}, nil},
		{"bad namespace", model.Egress{Namespace: "Internet", Name: "nat", Destinations: dst}, model.ErrInvalidName},
		{"empty namespace", model.Egress{Name: "nat", Destinations: dst}, model.ErrInvalidName},
		{"bad name", model.Egress{Namespace: "internet", Name: "nat_1", Destinations: dst}, model.ErrInvalidName},
		{"long name", model.Egress{Namespace: "internet", Name: strings.Repeat("a", 64), Destinations: dst}, model.ErrInvalidName},
		{"no destination", model.Egress{Namespace: "internet", Name: "nat"}, model.ErrNoDestination},
		{"not canonical", model.Egress{Namespace: "internet", Name: "nat", Destinations: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24")}}, model.ErrInvalidCIDR},
		{"mapped", model.Egress{Namespace: "internet", Name: "nat", Destinations: []netip.Prefix{netip.MustParsePrefix("::ffff:192.0.2.0/120")}}, model.ErrInvalidCIDR},
		{"duplicate", model.Egress{Namespace: "internet", Name: "nat", Destinations: append(slices.Clone(dst), dst...)}, model.ErrDuplicateDestination},
		{"managed", model.Egress{Namespace: "internet", Name: "nat", Destinations: dst, Replicas: 2}, nil},
		{"managed with image", model.Egress{Namespace: "internet", Name: "nat", Destinations: dst, Replicas: 1, Image: "registry.example.com/gw@sha256:0123"}, nil},
		{"negative replicas", model.Egress{Namespace: "internet", Name: "nat", Destinations: dst, Replicas: -1}, model.ErrInvalidGateways},
		{"too many replicas", model.Egress{Namespace: "internet", Name: "nat", Destinations: dst, Replicas: model.MaxGatewayReplicas + 1}, model.ErrInvalidGateways},
		{"image without replicas", model.Egress{Namespace: "internet", Name: "nat", Destinations: dst, Image: "pause"}, model.ErrInvalidGateways},
		{"image with space", model.Egress{Namespace: "internet", Name: "nat", Destinations: dst, Replicas: 1, Image: "pause --privileged"}, model.ErrInvalidGateways},
		{"image like a flag", model.Egress{Namespace: "internet", Name: "nat", Destinations: dst, Replicas: 1, Image: "-x"}, model.ErrInvalidGateways},
		{"image too long", model.Egress{Namespace: "internet", Name: "nat", Destinations: dst, Replicas: 1, Image: strings.Repeat("a", 513)}, model.ErrInvalidGateways},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.e.Validate(); !errors.Is(err, tt.want) {
				t.Fatalf("Validate = %v, want %v", err, tt.want)
			}
		})
	}
	for _, bad := range []string{"10.0.0.1/8", "nonsense", "10.0.0.0"} {
		if _, err := model.ParseDestinations([]string{bad}); !errors.Is(err, model.ErrInvalidCIDR) {
			t.Errorf("ParseDestinations(%q) = %v, want ErrInvalidCIDR", bad, err)
		}
	}
}

func TestEgressLifecycle(t *testing.T) {
	ctx := context.Background()
	st, cli := newStore(t)
	e, err := st.CreateEgress(ctx, model.Egress{Namespace: "internet", Name: "nat", Destinations: mustPrefixes(t, "0.0.0.0/0", "2001:db8::/32")})
	if err != nil {
		t.Fatal(err)
	}
	if e.VNI != model.PreferredVNI("internet", "nat") || e.CreatedAt.IsZero() {
		t.Errorf("created %+v, want VNI %d and a creation time", e, model.PreferredVNI("internet", "nat"))
	}
	got, err := st.GetEgress(ctx, "internet", "nat")
	if err != nil || got.VNI != e.VNI || !slices.Equal(got.Destinations, e.Destinations) {
		t.Fatalf("GetEgress = %+v, %v; want %+v", got, err, e)
	}

	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"create again", func() error {
			_, err := st.CreateEgress(ctx, model.Egress{Namespace: "internet", Name: "nat", Destinations: mustPrefixes(t, "10.0.0.0/8")})
			return err
		}, model.ErrEgressExists},
		{"create invalid", func() error {
			_, err := st.CreateEgress(ctx, model.Egress{Namespace: "internet", Name: "x"})
			return err
		}, model.ErrNoDestination},
		{"get unknown", func() error { _, err := st.GetEgress(ctx, "internet", "nope"); return err }, model.ErrEgressNotFound},
		{"delete unknown", func() error { return st.DeleteEgress(ctx, "internet", "nope") }, model.ErrEgressNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := dump(t, cli, st.Prefix())
			if err := c.do(); !errors.Is(err, c.want) {
				t.Fatalf("error = %v, want %v", err, c.want)
			}
			if after := dump(t, cli, st.Prefix()); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("a failed call changed etcd:\nbefore %v\nafter  %v", before, after)
			}
		})
	}

	// The record is plain JSON under egresses/<namespace>/<name>.
	resp, err := cli.Get(ctx, st.Prefix()+"egresses/internet/nat")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("egress key: %v, %v", resp, err)
	}
	var raw map[string]any
	if err := json.Unmarshal(resp.Kvs[0].Value, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"namespace", "name", "destinations", "vni", "createdAt"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("egress record lacks %q: %s", k, resp.Kvs[0].Value)
		}
	}

	if err := st.DeleteEgress(ctx, "internet", "nat"); err != nil {
		t.Fatal(err)
	}
	if all, err := st.ListEgresses(ctx); err != nil || len(all) != 0 {
		t.Fatalf("after delete ListEgresses = %v, %v", all, err)
	}
}

// TestEgressVNI checks that VNIs are unique: a taken preferred VNI moves to
// the next free one, and concurrent creations never share one.
func TestEgressVNI(t *testing.T) {
	ctx := context.Background()
	st, cli := newStore(t)
	// A record holding the VNI "b/b" would get.
	want := model.PreferredVNI("b", "b")
	squatter := model.Egress{Namespace: "a", Name: "a", Destinations: mustPrefixes(t, "10.0.0.0/8"), VNI: want}
	b, _ := json.Marshal(squatter)
	if _, err := cli.Put(ctx, st.Prefix()+"egresses/a/a", string(b)); err != nil {
		t.Fatal(err)
	}
	e, err := st.CreateEgress(ctx, model.Egress{Namespace: "b", Name: "b", Destinations: mustPrefixes(t, "10.0.0.0/8")})
	if err != nil {
		t.Fatal(err)
	}
	if e.VNI != want%model.MaxVNI+1 {
		t.Errorf("VNI %d taken: got %d, want the next one %d", want, e.VNI, want%model.MaxVNI+1)
	}

	const n = 24
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = st.CreateEgress(ctx, model.Egress{Namespace: "c", Name: fmt.Sprintf("e%d", i), Destinations: mustPrefixes(t, "10.0.0.0/8")})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	all, err := st.ListEgresses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint32]string{}
	for _, e := range all {
		if e.VNI == 0 || e.VNI > model.MaxVNI {
			t.Errorf("%s has VNI %d", e.Key(), e.VNI)
		}
		if other, dup := seen[e.VNI]; dup {
			t.Errorf("%s and %s share VNI %d", e.Key(), other, e.VNI)
		}
		seen[e.VNI] = e.Key()
	}
	if len(all) != n+2 {
		t.Errorf("%d egresses, want %d", len(all), n+2)
	}
	if !slices.IsSortedFunc(all, func(a, b model.Egress) int {
		if a.Key() < b.Key() {
			return -1
		}
		return 1
	}) {
		t.Errorf("ListEgresses is not sorted: %v", all)
	}
}

func TestWatchEgresses(t *testing.T) {
	st, _ := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan []model.Egress, 16)
	done := make(chan error, 1)
	go func() { done <- st.WatchEgresses(ctx, 100*time.Millisecond, func(e []model.Egress) { events <- e }) }()
	next := func(want int) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case e := <-events:
				if len(e) == want {
					return
				}
			case <-timeout:
				t.Fatalf("no event with %d egresses", want)
			}
		}
	}
	next(0)
	if _, err := st.CreateEgress(ctx, model.Egress{Namespace: "x", Name: "y", Destinations: mustPrefixes(t, "10.0.0.0/8")}); err != nil {
		t.Fatal(err)
	}
	next(1)
	if err := st.DeleteEgress(ctx, "x", "y"); err != nil {
		t.Fatal(err)
	}
	next(0)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("WatchEgresses returned %v, want the context's end", err)
	}
}

// TestAddressNetNS: the netns of an address survives the round trip, and
// records written before the field existed still decode.
func TestAddressNetNS(t *testing.T) {
	ctx := context.Background()
	st, cli := newStore(t)
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.40.0.0/24", "")}}); err != nil {
		t.Fatal(err)
	}
	b, a, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n1", Namespace: "ns", Pod: "p", ContainerID: "c1", Interface: "eth0", NetNS: "/var/run/netns/cni-1"})
	if err != nil {
		t.Fatal(err)
	}
	if a.NetNS != "/var/run/netns/cni-1" {
		t.Errorf("allocated %+v, want the netns kept", a)
	}
	old := `{"pool":"default","subnet":0,"block":0,"offset":1,"ipv4":"10.40.0.1","node":"n1","namespace":"ns","pod":"q","containerID":"c2","interface":"eth0","createdAt":"2026-01-01T00:00:00Z"}`
	if _, err := cli.Put(ctx, st.Prefix()+"addresses/default/0/0/1", old); err != nil {
		t.Fatal(err)
	}
	addrs, err := st.BlockAddresses(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, a := range addrs {
		got[a.ContainerID] = a.NetNS
	}
	if want := map[string]string{"c1": "/var/run/netns/cni-1", "c2": ""}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("netns by container = %v, want %v", got, want)
	}
}

// TestUpdateEgress: destinations change in place (same VNI, creation time
// and key), and every refused change leaves etcd as it was.
func TestUpdateEgress(t *testing.T) {
	ctx := context.Background()
	st, cli := newStore(t)
	e, err := st.CreateEgress(ctx, model.Egress{Namespace: "internet", Name: "nat", Destinations: mustPrefixes(t, "192.0.2.0/24", "2001:db8::/32")})
	if err != nil {
		t.Fatal(err)
	}
	update := func(c model.DestinationChange, want ...string) {
		t.Helper()
		got, changed, err := st.UpdateEgress(ctx, "internet", "nat", c)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Destinations, mustPrefixes(t, want...)) || !changed {
			t.Fatalf("UpdateEgress = %v (changed %v), want %v", got.Destinations, changed, want)
		}
		stored, err := st.GetEgress(ctx, "internet", "nat")
		if err != nil {
			t.Fatal(err)
		}
		if stored.VNI != e.VNI || !stored.CreatedAt.Equal(e.CreatedAt) || !slices.Equal(stored.Destinations, got.Destinations) {
			t.Fatalf("stored %+v after update, created %+v", stored, e)
		}
	}
	update(model.DestinationChange{Add: mustPrefixes(t, "198.51.100.0/24")}, "192.0.2.0/24", "2001:db8::/32", "198.51.100.0/24")
	update(model.DestinationChange{Remove: mustPrefixes(t, "192.0.2.0/24"), Add: mustPrefixes(t, "203.0.113.0/24")}, "2001:db8::/32", "198.51.100.0/24", "203.0.113.0/24")
	update(model.DestinationChange{Set: mustPrefixes(t, "0.0.0.0/0")}, "0.0.0.0/0")

	// A change to what is already there writes nothing.
	before := dump(t, cli, st.Prefix())
	if got, changed, err := st.UpdateEgress(ctx, "internet", "nat", model.DestinationChange{Set: mustPrefixes(t, "0.0.0.0/0")}); err != nil || changed || got.VNI != e.VNI {
		t.Errorf("no-op update = %+v, %v, %v", got, changed, err)
	}
	if after := dump(t, cli, st.Prefix()); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("a no-op update wrote to etcd")
	}

	refused := []struct {
		name   string
		egress string
		c      model.DestinationChange
		want   error
	}{
		{"unknown egress", "nope", model.DestinationChange{Add: mustPrefixes(t, "10.0.0.0/8")}, model.ErrEgressNotFound},
		{"add present", "nat", model.DestinationChange{Add: mustPrefixes(t, "0.0.0.0/0")}, model.ErrDuplicateDestination},
		{"add twice", "nat", model.DestinationChange{Add: mustPrefixes(t, "10.0.0.0/8", "10.0.0.0/8")}, model.ErrDuplicateDestination},
		{"set duplicates", "nat", model.DestinationChange{Set: mustPrefixes(t, "10.0.0.0/8", "10.0.0.0/8")}, model.ErrDuplicateDestination},
		{"remove absent", "nat", model.DestinationChange{Remove: mustPrefixes(t, "10.0.0.0/8")}, model.ErrDestinationNotFound},
		{"remove the last", "nat", model.DestinationChange{Remove: mustPrefixes(t, "0.0.0.0/0")}, model.ErrNoDestination},
		{"add and remove", "nat", model.DestinationChange{Add: mustPrefixes(t, "10.0.0.0/8"), Remove: mustPrefixes(t, "10.0.0.0/8")}, model.ErrInvalidChange},
		{"set and add", "nat", model.DestinationChange{Set: mustPrefixes(t, "10.0.0.0/8"), Add: mustPrefixes(t, "10.1.0.0/16")}, model.ErrInvalidChange},
		{"not canonical", "nat", model.DestinationChange{Add: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/8")}}, model.ErrInvalidCIDR},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			before := dump(t, cli, st.Prefix())
			if _, _, err := st.UpdateEgress(ctx, "internet", c.egress, c.c); !errors.Is(err, c.want) {
				t.Fatalf("error = %v, want %v", err, c.want)
			}
			if after := dump(t, cli, st.Prefix()); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("a refused update changed etcd:\nbefore %v\nafter  %v", before, after)
			}
		})
	}

	// Concurrent additions all land: none overwrites another's.
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, _, errs[i] = st.UpdateEgress(ctx, "internet", "nat", model.DestinationChange{Add: mustPrefixes(t, fmt.Sprintf("10.%d.0.0/16", i))})
		})
	}
	wg.Wait()
	for i, err := range errs {
		// Losing the bounded retries to the others is allowed, but
		// must say so; an edit must never vanish silently.
		if err != nil && !errors.Is(err, model.ErrConflict) {
			t.Errorf("concurrent update %d: %v", i, err)
		}
	}
	got, err := st.GetEgress(ctx, "internet", "nat")
	if err != nil {
		t.Fatal(err)
	}
	for i, err := range errs {
		if has := slices.Contains(got.Destinations, netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", i))); has != (err == nil) {
			t.Errorf("update %d returned %v, but its destination stored: %v", i, err, has)
		}
	}
	if got.VNI != e.VNI {
		t.Errorf("VNI changed from %d to %d", e.VNI, got.VNI)
	}
}

// TestChangeEgressGateways: replicas and image change in place and are
// stored; refused changes write nothing; replicas 0 clears the image.
func TestChangeEgressGateways(t *testing.T) {
	ctx := context.Background()
	st, cli := newStore(t)
	e, err := st.CreateEgress(ctx, model.Egress{Namespace: "internet", Name: "nat", Destinations: mustPrefixes(t, "0.0.0.0/0"), Replicas: 2})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := st.GetEgress(ctx, "internet", "nat"); err != nil || got.Replicas != 2 || got.Image != "" || !got.Managed() {
		t.Fatalf("created %+v, %v", got, err)
	}
	i32 := func(v int32) *int32 { return &v }
	str := func(v string) *string { return &v }
	steps := []struct {
		name     string
		c        model.EgressChange
		replicas int32
		image    string
		changed  bool
	}{
		{"scale", model.EgressChange{Replicas: i32(3)}, 3, "", true},
		{"image", model.EgressChange{Image: str("registry.example.com/pause:3.10")}, 3, "registry.example.com/pause:3.10", true},
		{"same again", model.EgressChange{Replicas: i32(3), Image: str("registry.example.com/pause:3.10")}, 3, "registry.example.com/pause:3.10", false},
		{"default image", model.EgressChange{Image: str("")}, 3, "", true},
		{"both and a destination", model.EgressChange{Replicas: i32(1), Image: str("gw:1"), Destinations: model.DestinationChange{Add: mustPrefixes(t, "::/0")}}, 1, "gw:1", true},
		{"bring your own", model.EgressChange{Replicas: i32(0)}, 0, "", true},
	}
	for _, s := range steps {
		before := dump(t, cli, st.Prefix())
		got, changed, err := st.ChangeEgress(ctx, "internet", "nat", s.c)
		if err != nil || changed != s.changed || got.Replicas != s.replicas || got.Image != s.image {
			t.Fatalf("%s: UpdateEgress = %+v, changed %v, %v", s.name, got, changed, err)
		}
		stored, err := st.GetEgress(ctx, "internet", "nat")
		if err != nil || stored.Replicas != s.replicas || stored.Image != s.image || stored.VNI != e.VNI {
			t.Fatalf("%s: stored %+v, %v", s.name, stored, err)
		}
		if after := dump(t, cli, st.Prefix()); (fmt.Sprint(after) != fmt.Sprint(before)) != s.changed {
			t.Fatalf("%s: etcd changed %v, want %v", s.name, !s.changed, s.changed)
		}
	}

	for _, c := range []struct {
		name string
		c    model.EgressChange
	}{
		{"image of bring-your-own gateways", model.EgressChange{Image: str("gw:1")}},
		{"negative", model.EgressChange{Replicas: i32(-2)}},
		{"too many", model.EgressChange{Replicas: i32(model.MaxGatewayReplicas + 1)}},
		{"bad image", model.EgressChange{Replicas: i32(1), Image: str("gw 1")}},
	} {
		before := dump(t, cli, st.Prefix())
		if _, _, err := st.ChangeEgress(ctx, "internet", "nat", c.c); !errors.Is(err, model.ErrInvalidGateways) {
			t.Errorf("%s: error = %v, want ErrInvalidGateways", c.name, err)
		}
		if after := dump(t, cli, st.Prefix()); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("%s: a refused update changed etcd", c.name)
		}
	}
}
