package mtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// nodeBIRDConfig is the configuration shipped as docs/examples/bird-node.conf:
// import the node's exported blocks from kernel table 119 and advertise
// them over iBGP; install the other nodes' blocks into the main table.
func nodeBIRDConfig(routerID, reflector string) string {
	return fmt.Sprintf(`log stderr all;
router id %s;

protocol device {
	scan time 5;
}

# Coil exports every block this node owns into kernel table 119.
ipv4 table coil4;
protocol kernel coil_export {
	kernel table 119;
	learn;
	scan time 1;
	ipv4 {
		table coil4;
		import all;
		export none;
	};
}

# The node's own blocks reach master4 (and BGP) through this pipe; the
# kernel protocol below must not copy them into the main table, where a
# route to lo would swallow the pods' traffic.
protocol pipe coil_pipe {
	table coil4;
	peer table master4;
	import none;
	export all;
}

protocol kernel main_table {
	scan time 1;
	ipv4 {
		import none;
		export filter {
			if proto = "coil_pipe" || proto = "coil_export" then reject;
			accept;
		};
	};
}

protocol bgp reflector {
	local as %d;
	neighbor %s as %d;
	direct;
	hold time 9;
	connect retry time 1;
	ipv4 {
		# Without this the learned block routes install as unreachable.
		gateway direct;
		import all;
		export filter {
			if proto = "coil_export" || proto = "coil_pipe" then accept;
			reject;
		};
	};
}
`, routerID, bgpAS, reflector, bgpAS)
}

// reflectorBIRDConfig makes the fabric a route reflector for every node.
func reflectorBIRDConfig(routerID string, clients []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "log stderr all;\nrouter id %s;\n\nprotocol device {\n\tscan time 5;\n}\n", routerID)
	for i, c := range clients {
		fmt.Fprintf(&b, `
protocol bgp node%d {
	local as %d;
	neighbor %s as %d;
	rr client;
	direct;
	hold time 9;
	connect retry time 1;
	ipv4 {
		import all;
		export all;
	};
}
`, i+1, bgpAS, c, bgpAS)
	}
	return b.String()
}

func (c *Cluster) startBIRD() error {
	var clients []string
	for _, n := range c.Nodes {
		clients = append(clients, n.V4.String())
	}
	start := func(netns, name, conf string) (*process, error) {
		dir := mkdir(filepath.Join(c.Dir, name))
		path := filepath.Join(dir, "bird.conf")
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			return nil, err
		}
		if _, err := run("bird", "-p", "-c", path); err != nil {
			return nil, fmt.Errorf("BIRD rejects its configuration: %w", err)
		}
		return c.start(netns, name, nil, "bird", "-f", "-c", path,
			"-s", filepath.Join(dir, "bird.ctl"), "-P", filepath.Join(dir, "bird.pid"))
	}
	var err error
	if c.rr, err = start(c.fabric, "bird-reflector", reflectorBIRDConfig(fabricV4, clients)); err != nil {
		return err
	}
	for _, n := range c.Nodes {
		if n.bird, err = start(n.NetNS, "bird-"+n.Name, nodeBIRDConfig(n.V4.String(), fabricV4)); err != nil {
			return err
		}
	}
	return nil
}
