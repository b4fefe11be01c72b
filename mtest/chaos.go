package mtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// This file holds what fault injection (the chaos soak, mtest/soak) needs
// of a cluster: crashing and restarting its daemons one by one, finding
// the leaders, and cutting a node off etcd.

// controllerReplicaMetricsAddr is where replica i of a multi-replica
// coil-controller serves /metrics: the replicas share the ctl namespace.
func controllerReplicaMetricsAddr(i int) string { return fmt.Sprintf("127.0.0.1:%d", 9390+i) }

// StartControllerReplica (re)starts replica i of Options.ControllerReplicas.
func (c *Cluster) StartControllerReplica(i int) error {
	if i < 0 || i >= len(c.replicas) {
		return fmt.Errorf("no coil-controller replica %d (the cluster runs %d)", i, len(c.replicas))
	}
	args := append([]string{
		"--etcd-endpoints", c.EtcdEndpoints(),
		"--kubeconfig", c.kubeconfig,
		"--leader-elect=true",
		"--leader-elect-namespace", "kube-system",
		"--metrics-addr", controllerReplicaMetricsAddr(i),
	}, c.opts.ControllerArgs...)
	p, err := c.start(c.ctl, fmt.Sprintf("coil-controller-%d", i), nil, filepath.Join(c.BinDir, "coil-controller"), args...)
	if err != nil {
		return err
	}
	c.replicas[i] = p
	return nil
}

// ControllerReplicas is the number of coil-controller replicas run with
// leader election (0 when the cluster runs one without).
func (c *Cluster) ControllerReplicas() int { return len(c.replicas) }

// KillControllerReplica crashes replica i with SIGKILL.
func (c *Cluster) KillControllerReplica(i int) { c.replicas[i].kill() }

// ControllerReplicaRunning reports whether replica i has not exited.
func (c *Cluster) ControllerReplicaRunning(i int) bool { return c.replicas[i].running() }

// ControllerReplicaLog returns the end of replica i's log.
func (c *Cluster) ControllerReplicaLog(i int) string { return c.replicas[i].logTail() }

// ControllerLeader returns the replica whose /metrics says it leads.
func (c *Cluster) ControllerLeader(ctx context.Context) (int, error) {
	for i, p := range c.replicas {
		if !p.running() {
			continue
		}
		m, err := scrape(ctx, c.ctl, controllerReplicaMetricsAddr(i))
		if err == nil && strings.Contains(m, "\ncoil_controller_leader 1") {
			return i, nil
		}
	}
	return -1, fmt.Errorf("no coil-controller replica leads")
}

// CoildRunning reports whether the node's coild has not exited.
func (n *Node) CoildRunning() bool { return n.coild != nil && n.coild.running() }

// EtcdMembers is the number of members of Coil's etcd.
func (c *Cluster) EtcdMembers() int { return len(c.etcd) }

// EtcdMemberRunning reports whether member i has not exited.
func (c *Cluster) EtcdMemberRunning(i int) bool { return c.etcd[i].running() }

// EtcdLeader returns the index of the member that leads Coil's etcd.
func (c *Cluster) EtcdLeader() (int, error) {
	out, err := c.Etcdctl("endpoint", "status", "-w", "json")
	if err != nil && strings.TrimSpace(out) == "" {
		return -1, err
	}
	var st []struct {
		Endpoint string `json:"Endpoint"`
		Status   struct {
			Header struct {
				MemberID uint64 `json:"member_id"`
			} `json:"header"`
			Leader uint64 `json:"leader"`
		} `json:"Status"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return -1, fmt.Errorf("parse etcdctl endpoint status %q: %w", out, err)
	}
	for _, s := range st {
		if s.Status.Leader == 0 || s.Status.Leader != s.Status.Header.MemberID {
			continue
		}
		for i, u := range c.etcdURLs {
			if u == s.Endpoint {
				return i, nil
			}
		}
	}
	return -1, fmt.Errorf("no etcd member leads: %s", out)
}

// EtcdMetrics scrapes member i's /metrics.
func (c *Cluster) EtcdMetrics(ctx context.Context, i int) (string, error) {
	return scrape(ctx, c.ctl, strings.TrimPrefix(c.etcdURLs[i], "http://"))
}

// etcdCutTable is the nftables table of Node.CutEtcd.
const etcdCutTable = "coil_mtest_etcd_cut"

// CutEtcd drops every packet the node sends to Coil's etcd members (and
// their answers), as if its links to etcd were down; the API server and
// the other nodes stay reachable. RestoreEtcd undoes it.
func (n *Node) CutEtcd() error {
	var ports []string
	for i := range n.c.etcdURLs {
		ports = append(ports, fmt.Sprint(2379+100*i))
	}
	set := "{ " + strings.Join(ports, ", ") + " }"
	rules := fmt.Sprintf(`table inet %[1]s {
  chain out { type filter hook output priority 0; ip daddr %[2]s tcp dport %[3]s drop; }
  chain in { type filter hook input priority 0; ip saddr %[2]s tcp sport %[3]s drop; }
}
`, etcdCutTable, ctlV4, set)
	if _, err := runStdin(n.NetNS, rules, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("cut %s from etcd: %w", n.Name, err)
	}
	return nil
}

// RestoreEtcd ends CutEtcd.
func (n *Node) RestoreEtcd() error {
	if _, err := runIn(n.NetNS, nil, "nft", "delete", "table", "inet", etcdCutTable); err != nil {
		return fmt.Errorf("restore %s's links to etcd: %w", n.Name, err)
	}
	return nil
}

// runStdin is runIn with input on stdin.
func runStdin(netns, stdin string, name string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", netns, name}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), netns, err, out)
	}
	return string(out), nil
}
