package soak

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/coil-project/coil/mtest"
	"github.com/coil-project/coil/nodenet"
)

// Kinds of invariant violations.
const (
	// VDuplicate: one address in the network namespaces of two live pods.
	VDuplicate = "duplicate address"
	// VUnrecorded: a live pod's address has no etcd record naming it.
	VUnrecorded = "live address not recorded for its owner"
	// VLost: a live pod's network namespace lacks an address ADD gave it.
	VLost = "address missing from its pod"
	// VOrphanRecord: an address record whose owner is no live pod.
	VOrphanRecord = "record without live pod"
	// VOrphanBlock: a block holding no address after the grace period.
	VOrphanBlock = "empty block kept"
	// VOrphanHostRoute: a host route to a pod that is not live on the node.
	VOrphanHostRoute = "host route without live pod"
	// VOrphanVeth: a host veth of no live pod.
	VOrphanVeth = "leftover veth"
	// VStaleExport: a table-119 route that is not one of the node's blocks.
	VStaleExport = "stale table-119 route"
	// VMissingExport: a block of the node missing from its table 119.
	VMissingExport = "block not exported"
	// VCoildExit: a coild exited without the soak causing it.
	VCoildExit = "coild exit not caused by the soak"
	// VAddFailure: an ADD failed with an error that is not retryable.
	VAddFailure = "ADD failed with a non-retryable error"
	// VNeverAdded: a pod's ADD did not succeed on retry.
	VNeverAdded = "ADD never succeeded on retry"
	// VNeverDeleted: a pod's DEL did not succeed on retry.
	VNeverDeleted = "DEL never succeeded on retry"
)

// Violation is one broken invariant.
type Violation struct {
	Kind   string
	Detail string
}

func (v Violation) String() string { return v.Kind + ": " + v.Detail }

// LivePod is a pod the checker treats as alive: its network namespace, Pod
// object and CNI attachment exist.
type LivePod struct {
	Pod *mtest.Pod
}

// Checker compares the state of a cluster (pod network namespaces, etcd,
// each node's links and routes) with the pods that should be alive.
type Checker struct {
	C *mtest.Cluster
	// Prefix is Coil's etcd key prefix.
	Prefix string

	mu sync.Mutex
	// reads counts the etcd requests the checker made itself, so that the
	// report can leave them out of Coil's own.
	reads int
}

// EtcdReads is the number of etcd requests the checker made.
func (ck *Checker) EtcdReads() int {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	return ck.reads
}

// Record is the part of an address record the checks read.
type Record struct {
	Key         string `json:"-"`
	Pool        string `json:"pool"`
	Subnet      int    `json:"subnet"`
	Block       int    `json:"block"`
	IPv4        string `json:"ipv4"`
	IPv6        string `json:"ipv6"`
	Node        string `json:"node"`
	Namespace   string `json:"namespace"`
	Pod         string `json:"pod"`
	ContainerID string `json:"containerID"`
}

// Block is the part of a block record the checks read.
type Block struct {
	Key    string `json:"-"`
	Pool   string `json:"pool"`
	Subnet int    `json:"subnet"`
	Index  int    `json:"index"`
	IPv4   string `json:"ipv4"`
	IPv6   string `json:"ipv6"`
	Node   string `json:"node"`
}

func (b Block) id() string { return fmt.Sprintf("%s/%d/%d", b.Pool, b.Subnet, b.Index) }
func (r Record) blockID() string {
	return fmt.Sprintf("%s/%d/%d", r.Pool, r.Subnet, r.Block)
}

func (r Record) addrs() []string {
	var out []string
	for _, a := range []string{r.IPv4, r.IPv6} {
		if a != "" {
			out = append(out, a)
		}
	}
	return out
}

// getPrefix reads every key under prefix with etcdctl, as key/value pairs.
func (ck *Checker) getPrefix(prefix string) ([][2]string, error) {
	ck.mu.Lock()
	ck.reads++
	ck.mu.Unlock()
	out, err := ck.C.Etcdctl("get", "--prefix", prefix, "-w", "json")
	if err != nil {
		return nil, err
	}
	var resp struct {
		KVs []struct {
			Key   []byte `json:"key"`
			Value []byte `json:"value"`
		} `json:"kvs"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		return nil, fmt.Errorf("parse etcdctl get %s: %w", prefix, err)
	}
	kvs := make([][2]string, 0, len(resp.KVs))
	for _, kv := range resp.KVs {
		kvs = append(kvs, [2]string{string(kv.Key), string(kv.Value)})
	}
	return kvs, nil
}

// Records reads every address record.
func (ck *Checker) Records() ([]Record, error) {
	kvs, err := ck.getPrefix(ck.Prefix + "addresses/")
	if err != nil {
		return nil, fmt.Errorf("read address records: %w", err)
	}
	recs := make([]Record, 0, len(kvs))
	for _, kv := range kvs {
		var r Record
		if err := json.Unmarshal([]byte(kv[1]), &r); err != nil {
			return nil, fmt.Errorf("parse record %s: %w", kv[0], err)
		}
		r.Key = kv[0]
		recs = append(recs, r)
	}
	return recs, nil
}

// Blocks reads every block record.
func (ck *Checker) Blocks() ([]Block, error) {
	kvs, err := ck.getPrefix(ck.Prefix + "blocks/")
	if err != nil {
		return nil, fmt.Errorf("read blocks: %w", err)
	}
	blocks := make([]Block, 0, len(kvs))
	for _, kv := range kvs {
		var b Block
		if err := json.Unmarshal([]byte(kv[1]), &b); err != nil {
			return nil, fmt.Errorf("parse block %s: %w", kv[0], err)
		}
		b.Key = kv[0]
		blocks = append(blocks, b)
	}
	return blocks, nil
}

// PodAddrs returns the global addresses of eth0 in the pod's namespace.
func PodAddrs(netns string) ([]string, error) {
	out, err := exec.Command("ip", "-n", netns, "-j", "addr", "show", "dev", "eth0").Output()
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", netns, err)
	}
	var links []struct {
		AddrInfo []struct {
			Local string `json:"local"`
			Scope string `json:"scope"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("parse addresses of %s: %w", netns, err)
	}
	var addrs []string
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if a.Scope == "global" {
				addrs = append(addrs, a.Local)
			}
		}
	}
	sort.Strings(addrs)
	return addrs, nil
}

// CheckLive checks the pods that stayed alive while it looked: no address
// in two of them, each of their addresses recorded in etcd for them, and
// each holding what ADD gave it. stable returns the pods alive at a moment
// (by network namespace, with a value that changes whenever the pod is
// replaced); a pod is judged only if stable returns it unchanged before
// etcd is read and after every namespace is, so that a pod coming or
// going meanwhile is no false alarm. read, when not nil, holds a pod from
// changing while its namespace is read.
func (ck *Checker) CheckLive(stable func() map[string]Stable, read func(netns string, f func())) ([]Violation, error) {
	before := stable()
	recs, err := ck.Records()
	if err != nil {
		return nil, err
	}
	byAddr := map[string]Record{}
	for _, r := range recs {
		for _, a := range r.addrs() {
			byAddr[a] = r
		}
	}
	seen := map[string][]string{}
	for netns, s := range before {
		var addrs []string
		var rerr error
		f := func() { addrs, rerr = PodAddrs(netns) }
		if read != nil {
			read(netns, f)
		} else {
			f()
		}
		if rerr != nil {
			// Gone meanwhile: judged only if still stable, below.
			addrs = nil
		}
		seen[netns] = addrs
		_ = s
	}
	after := stable()
	var vs []Violation
	holders := map[string][]string{}
	for netns, s := range before {
		if a, ok := after[netns]; !ok || a.Gen != s.Gen {
			continue
		}
		p := s.Pod
		who := p.Namespace + "/" + p.Name + " on " + p.Node.Name
		for _, a := range seen[netns] {
			holders[a] = append(holders[a], who)
			r, ok := byAddr[a]
			if !ok || r.ContainerID != p.ContainerID || r.Namespace != p.Namespace || r.Pod != p.Name || r.Node != p.Node.Name {
				vs = append(vs, Violation{VUnrecorded, fmt.Sprintf("%s holds %s, etcd records %s", who, a, describe(r, ok))})
			}
		}
		for _, want := range p.IPs {
			if !slices.Contains(seen[netns], want.String()) {
				vs = append(vs, Violation{VLost, fmt.Sprintf("%s was given %s, its eth0 holds %v", who, want, seen[netns])})
			}
		}
	}
	for a, hs := range holders {
		if len(hs) > 1 {
			sort.Strings(hs)
			vs = append(vs, Violation{VDuplicate, fmt.Sprintf("%s held by %s", a, strings.Join(hs, " and "))})
		}
	}
	sortViolations(vs)
	return vs, nil
}

// CheckGone checks that no address record names a container that has
// been gone for longer than age (by gone, container id to when its pod
// was deleted): the continuous form of the leak check, with a bound far
// beyond the leak sweep's grace.
func (ck *Checker) CheckGone(gone func(cid string) (time.Time, bool), age time.Duration) ([]Violation, error) {
	recs, err := ck.Records()
	if err != nil {
		return nil, err
	}
	var vs []Violation
	for _, r := range recs {
		if t, ok := gone(r.ContainerID); ok && time.Since(t) > age {
			vs = append(vs, Violation{VOrphanRecord, fmt.Sprintf("%s %v for %s, whose pod went %s ago", r.Key, r.addrs(), describe(r, true), time.Since(t).Round(time.Second))})
		}
	}
	return vs, nil
}

// Stable is a pod alive at some moment and its generation.
type Stable struct {
	Pod *mtest.Pod
	Gen uint64
}

func describe(r Record, ok bool) string {
	if !ok {
		return "nothing"
	}
	return fmt.Sprintf("%s/%s (container %s) on %s", r.Namespace, r.Pod, r.ContainerID, r.Node)
}

// CheckOrphans checks that nothing is left without a live owner: every
// address record belongs to a live pod, every block holds an address,
// every host veth and host route of a node belongs to a live pod on it,
// and each node's table 119 holds exactly its blocks. Run it once every
// pod that is not in live has had its grace periods.
func (ck *Checker) CheckOrphans(live []*mtest.Pod) ([]Violation, error) {
	recs, err := ck.Records()
	if err != nil {
		return nil, err
	}
	blocks, err := ck.Blocks()
	if err != nil {
		return nil, err
	}
	byCID := map[string]*mtest.Pod{}
	for _, p := range live {
		byCID[p.ContainerID] = p
	}
	var vs []Violation
	used := map[string]bool{}
	for _, r := range recs {
		used[r.blockID()] = true
		p, ok := byCID[r.ContainerID]
		if !ok || p.Namespace != r.Namespace || p.Name != r.Pod || p.Node.Name != r.Node {
			vs = append(vs, Violation{VOrphanRecord, fmt.Sprintf("%s %v for %s", r.Key, r.addrs(), describe(r, true))})
		}
	}
	nodeBlocks := map[string][]string{}
	for _, b := range blocks {
		if !used[b.id()] {
			vs = append(vs, Violation{VOrphanBlock, fmt.Sprintf("%s (%s %s) of %s holds no address", b.Key, b.IPv4, b.IPv6, b.Node)})
		}
		for _, cidr := range []string{b.IPv4, b.IPv6} {
			if cidr != "" {
				nodeBlocks[b.Node] = append(nodeBlocks[b.Node], cidr)
			}
		}
	}
	for _, n := range ck.C.Nodes {
		nv, err := nodeOrphans(n, live, nodeBlocks[n.Name])
		if err != nil {
			return nil, err
		}
		vs = append(vs, nv...)
	}
	sortViolations(vs)
	return vs, nil
}

// nodeOrphans checks one node's veths, host routes and table 119.
func nodeOrphans(n *mtest.Node, live []*mtest.Pod, blocks []string) ([]Violation, error) {
	owners := map[string]*mtest.Pod{}
	for _, p := range live {
		if p.Node == n {
			owners[nodenet.HostVethName(p.Namespace, p.Name)] = p
		}
	}
	out, err := exec.Command("ip", "-n", n.NetNS, "-j", "link", "show", "type", "veth").Output()
	if err != nil {
		return nil, fmt.Errorf("links of %s: %w", n.Name, err)
	}
	var links []struct {
		Name string `json:"ifname"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("parse links of %s: %w", n.Name, err)
	}
	var vs []Violation
	for _, l := range links {
		// eth0 is the node's own link to the fabric.
		if l.Name == "eth0" {
			continue
		}
		if _, ok := owners[l.Name]; !ok {
			vs = append(vs, Violation{VOrphanVeth, fmt.Sprintf("%s on %s", l.Name, n.Name)})
		}
	}
	for _, fam := range []string{"-4", "-6"} {
		routes, err := n.Routes(fam, "main")
		if err != nil {
			return nil, err
		}
		for _, r := range routes {
			// The kernel's own routes (fe80::/64 of each link) are no
			// host routes of a pod.
			if !strings.HasPrefix(r.Dev, nodenet.HostVethPrefix) || r.Protocol == "kernel" {
				continue
			}
			p, ok := owners[r.Dev]
			if !ok || !hasAddr(p, r.Dst) {
				vs = append(vs, Violation{VOrphanHostRoute, fmt.Sprintf("%s dev %s on %s", r.Dst, r.Dev, n.Name)})
			}
		}
		export, err := n.Routes(fam, "119")
		if err != nil {
			return nil, err
		}
		for _, r := range export {
			if !slices.Contains(blocks, r.Dst) {
				vs = append(vs, Violation{VStaleExport, fmt.Sprintf("%s on %s (its blocks: %v)", r.Dst, n.Name, blocks)})
			}
		}
		for _, b := range blocks {
			if netip.MustParsePrefix(b).Addr().Is4() != (fam == "-4") {
				continue
			}
			if !slices.ContainsFunc(export, func(r mtest.RouteInfo) bool { return r.Dst == b }) {
				vs = append(vs, Violation{VMissingExport, fmt.Sprintf("%s of %s", b, n.Name)})
			}
		}
	}
	return vs, nil
}

func hasAddr(p *mtest.Pod, dst string) bool {
	for _, a := range p.IPs {
		if a.String() == dst || netip.PrefixFrom(a, a.BitLen()).String() == dst {
			return true
		}
	}
	return false
}

func sortViolations(vs []Violation) {
	sort.Slice(vs, func(i, j int) bool {
		if vs[i].Kind != vs[j].Kind {
			return vs[i].Kind < vs[j].Kind
		}
		return vs[i].Detail < vs[j].Detail
	})
}

// waitClean runs check until it finds nothing or ctx ends, and returns
// what the last run found.
func waitClean(ctx context.Context, check func() ([]Violation, error)) ([]Violation, error) {
	for {
		vs, err := check()
		if err == nil && len(vs) == 0 {
			return nil, nil
		}
		select {
		case <-ctx.Done():
			return vs, err
		case <-sleepC(2):
		}
	}
}
