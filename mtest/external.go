package mtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Addresses of the external host and of the fabric's side of its link.
const (
	externalNet4 = "203.0.113.0/24"
	externalNet6 = "fd00:203::/64"
	extFabricV4  = "203.0.113.1"
	extFabricV6  = "fd00:203::1"
	ExternalV4   = "203.0.113.2"
	ExternalV6   = "fd00:203::2"
)

// External is a host outside the cluster, as egress sees the Internet: the
// fabric routes to it, and it routes back to nothing but what the fabric
// routes (only the blocks of pools passed to RouteBlocks). It runs servers
// that answer every connection with the address they saw it come from.
type External struct {
	NetNS string
	// Server4 and Server6 are the peer-reporting servers.
	Server4, Server6 netip.AddrPort
	// Echo4 and Echo6 keep connections open and answer every line with
	// the address the connection comes from (see Conversation).
	Echo4, Echo6 netip.AddrPort
	c            *Cluster
	listeners    []net.Listener
	wg           sync.WaitGroup
	mu           sync.Mutex
	conns        []net.Conn
}

func (c *Cluster) buildExternal() (*External, error) {
	e := &External{NetNS: c.id + "-ext", c: c}
	if err := c.addNetNS(e.NetNS); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"-n", c.fabric, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", e.NetNS},
		{"-n", c.fabric, "addr", "add", extFabricV4 + "/24", "dev", "ext0"},
		{"-n", c.fabric, "addr", "add", extFabricV6 + "/64", "dev", "ext0", "nodad"},
		{"-n", c.fabric, "link", "set", "ext0", "up"},
		{"-n", e.NetNS, "addr", "add", ExternalV4 + "/24", "dev", "eth0"},
		{"-n", e.NetNS, "addr", "add", ExternalV6 + "/64", "dev", "eth0", "nodad"},
		{"-n", e.NetNS, "link", "set", "eth0", "up"},
		{"-n", e.NetNS, "route", "add", "default", "via", extFabricV4},
		{"-n", e.NetNS, "-6", "route", "add", "default", "via", extFabricV6},
	}
	for _, s := range steps {
		if _, err := run("ip", s...); err != nil {
			return nil, err
		}
	}
	// The fabric becomes the router between the nodes and the outside.
	if _, err := runIn(c.fabric, nil, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return nil, err
	}
	for _, a := range []string{ExternalV4, ExternalV6} {
		for _, echo := range []bool{false, true} {
			ap, err := e.serve(netip.MustParseAddr(a), echo)
			if err != nil {
				e.close()
				return nil, err
			}
			switch {
			case ap.Addr().Is4() && echo:
				e.Echo4 = ap
			case ap.Addr().Is4():
				e.Server4 = ap
			case echo:
				e.Echo6 = ap
			default:
				e.Server6 = ap
			}
		}
	}
	return e, nil
}

// serve starts a peer-reporting server on addr inside the external host;
// echo makes it answer every line of long-lived connections instead.
func (e *External) serve(addr netip.Addr, echo bool) (netip.AddrPort, error) {
	target, err := ns.GetNS("/var/run/netns/" + e.NetNS)
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer target.Close()
	var ln net.Listener
	// The socket is created inside the namespace and stays there.
	err = target.Do(func(ns.NetNS) error {
		var lerr error
		ln, lerr = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return lerr
	})
	runtime.KeepAlive(target)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("listen on %s in the external host: %w", addr, err)
	}
	e.listeners = append(e.listeners, ln)
	e.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			peer := netip.MustParseAddrPort(conn.RemoteAddr().String()).Addr().Unmap()
			if !echo {
				fmt.Fprintln(conn, peer)
				conn.Close()
				continue
			}
			e.mu.Lock()
			e.conns = append(e.conns, conn)
			e.mu.Unlock()
			// Ends when the client or close closes the connection.
			e.wg.Go(func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := fmt.Fprintln(conn, peer); err != nil {
						return
					}
				}
			})
		}
	})
	return netip.MustParseAddrPort(ln.Addr().String()), nil
}

func (e *External) close() {
	for _, l := range e.listeners {
		l.Close()
	}
	e.mu.Lock()
	for _, c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// RouteBlocks makes the fabric route the blocks nodes own in pool to them,
// as the routers of the outside world would learn them: only these pods
// can get answers from the external host. Call it after the pool's pods
// have started.
func (e *External) RouteBlocks(pool string) error {
	out, err := e.c.Coilctl("pool", "show", pool, "-o", "json")
	if err != nil {
		return err
	}
	var view struct {
		OwnedBlocks []struct {
			Node string `json:"node"`
			IPv4 string `json:"ipv4"`
			IPv6 string `json:"ipv6"`
		} `json:"ownedBlocks"`
	}
	if err := json.Unmarshal([]byte(out), &view); err != nil {
		return fmt.Errorf("coilctl pool show %s: %w", pool, err)
	}
	for _, b := range view.OwnedBlocks {
		var n *Node
		for _, x := range e.c.Nodes {
			if x.Name == b.Node {
				n = x
			}
		}
		if n == nil {
			continue
		}
		for _, r := range [][]string{{"-4", b.IPv4, n.V4.String()}, {"-6", b.IPv6, n.V6.String()}} {
			if r[1] == "" {
				continue
			}
			if _, err := run("ip", "-n", e.c.fabric, r[0], "route", "replace", r[1], "via", r[2]); err != nil {
				return err
			}
		}
	}
	return nil
}

// SeenAs connects from the pod to one of the external host's servers and
// returns the address the server saw the connection come from.
func (p *Pod) SeenAs(target netip.AddrPort, timeout time.Duration) (netip.Addr, error) {
	return SeenFrom("/var/run/netns/"+p.NetNS, target, timeout)
}

// SeenFrom connects from the network namespace at nsPath to one of the
// external host's servers and returns the address the server saw the
// connection come from.
func SeenFrom(nsPath string, target netip.AddrPort, timeout time.Duration) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := dialIn(nsPath, ctx, "tcp", target.String())
	if err != nil {
		return netip.Addr{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return netip.Addr{}, fmt.Errorf("read from %s: %w", target, err)
	}
	return netip.ParseAddr(strings.TrimSpace(line))
}

// Conversation is a long-lived connection from a pod to an echo server of
// the external host.
type Conversation struct {
	conn net.Conn
	r    *bufio.Reader
}

// Converse opens a connection from the pod to target (Echo4 or Echo6).
func (p *Pod) Converse(target netip.AddrPort, timeout time.Duration) (*Conversation, error) {
	return ConverseFrom("/var/run/netns/"+p.NetNS, target, timeout)
}

// ConverseFrom opens a connection to target from the network namespace at
// nsPath.
func ConverseFrom(nsPath string, target netip.AddrPort, timeout time.Duration) (*Conversation, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := dialIn(nsPath, ctx, "tcp", target.String())
	if err != nil {
		return nil, err
	}
	return &Conversation{conn: conn, r: bufio.NewReader(conn)}, nil
}

// SeenAs sends a line and returns the address the server saw the
// connection come from.
func (c *Conversation) SeenAs(timeout time.Duration) (netip.Addr, error) {
	c.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintln(c.conn, "?"); err != nil {
		return netip.Addr{}, err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.ParseAddr(strings.TrimSpace(line))
}

// Close closes the connection.
func (c *Conversation) Close() error { return c.conn.Close() }

// EgressState is what egress programmed in a pod's network namespace,
// counted with ip, bridge and nft (independently of Coil's own code).
type EgressState struct {
	Links, Rules, Routes, FDB, NFTRules int
}

// EgressState counts the egress settings in the pod's namespace.
func (p *Pod) EgressState() (EgressState, error) {
	var st EgressState
	count := func(name string, args ...string) (int, []map[string]any, error) {
		out, err := runIn(p.NetNS, nil, name, args...)
		var ce *cmdError
		if errors.As(err, &ce) && strings.Contains(ce.stderr, "table does not exist") {
			return 0, nil, nil // a table without routes
		}
		if err != nil {
			return 0, nil, err
		}
		var list []map[string]any
		if strings.TrimSpace(out) == "" {
			return 0, nil, nil
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return 0, nil, fmt.Errorf("%s %v: %w: %q", name, args, err, out)
		}
		return len(list), list, nil
	}
	var err error
	if st.Links, _, err = count("ip", "-j", "link", "show", "type", "vxlan"); err != nil {
		return st, err
	}
	for _, fam := range []string{"-4", "-6"} {
		_, rules, err := count("ip", fam, "-j", "rule", "show")
		if err != nil {
			return st, err
		}
		for _, r := range rules {
			if prio, _ := r["priority"].(float64); prio == 1990 || prio == 2000 || prio == 2010 {
				st.Rules++
			}
		}
		for _, table := range []string{"1990", "2010"} {
			n, _, err := count("ip", fam, "-j", "route", "show", "table", table)
			if err != nil {
				return st, err
			}
			st.Routes += n
		}
	}
	_, fdb, err := count("bridge", "-j", "fdb", "show")
	if err != nil {
		return st, err
	}
	for _, f := range fdb {
		if dev, _ := f["ifname"].(string); strings.HasPrefix(dev, "egc-") || strings.HasPrefix(dev, "egg") {
			st.FDB++
		}
	}
	out, err := runIn(p.NetNS, nil, "nft", "-j", "list", "table", "inet", "coil-egress")
	if ce := (*cmdError)(nil); errors.As(err, &ce) && strings.Contains(ce.stderr, "No such file") {
		return st, nil // no table, no rules
	}
	if err != nil {
		return st, err
	}
	var doc struct {
		Nftables []map[string]any `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return st, fmt.Errorf("nft -j list table: %w", err)
	}
	for _, o := range doc.Nftables {
		if _, ok := o["rule"]; ok {
			st.NFTRules++
		}
	}
	return st, nil
}

// FirstSeenAs opens a new connection from the pod to target every 20 ms,
// each allowed half a second, until one is seen from outside as an
// address for which want is true; it returns how long after start the
// first such attempt began. Overlapping attempts make the figure
// independent of how long a failing attempt hangs, and an attempt ends
// before TCP would retransmit its SYN (after a second), so a success is
// always that of the attempt's first SYN. ok is false if none succeeds
// before limit after start.
func (p *Pod) FirstSeenAs(target netip.AddrPort, want func(netip.Addr) bool, start time.Time, limit time.Duration) (took time.Duration, ok bool) {
	return FirstSeenFrom("/var/run/netns/"+p.NetNS, target, want, start, limit)
}

// FirstSeenFrom is FirstSeenAs from the network namespace at nsPath.
func FirstSeenFrom(nsPath string, target netip.AddrPort, want func(netip.Addr) bool, start time.Time, limit time.Duration) (took time.Duration, ok bool) {
	type result struct {
		began time.Time
		ok    bool
	}
	results := make(chan result, 1024)
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var first time.Time
	for first.IsZero() || time.Since(first) < 600*time.Millisecond {
		select {
		case <-tick.C:
			if !first.IsZero() {
				continue // only the attempts in flight may be earlier
			}
			if time.Since(start) > limit {
				return 0, false
			}
			wg.Go(func() {
				began := time.Now()
				seen, err := SeenFrom(nsPath, target, 500*time.Millisecond)
				results <- result{began, err == nil && want(seen)}
			})
		case r := <-results:
			if r.ok && (first.IsZero() || r.began.Before(first)) {
				first = r.began
			}
		}
	}
	return first.Sub(start), true
}
