package nodenet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procSys is where sysctls live. /proc/sys/net shows the network namespace
// of the thread that opens the file, so writes land in the current netns.
const procSys = "/proc/sys"

// writeSysctl sets one sysctl given as a path under /proc/sys.
func writeSysctl(name, value string) error {
	p := filepath.Join(procSys, name)
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// EnableForwarding turns on IPv4 and IPv6 forwarding in the current network
// namespace, which a node needs to pass traffic between pods and the uplink.
// IPv6 forwarding is skipped when the namespace has IPv6 disabled entirely.
func EnableForwarding() error {
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	err := writeSysctl("net/ipv6/conf/all/forwarding", "1")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// disableDAD turns off IPv6 duplicate address detection on one interface of
// the current netns. Coil assigns addresses from its own IPAM, so DAD can
// only delay them; on the host veth it also keeps the link-local address,
// which the host needs as the source of neighbour solicitations, from
// staying tentative for a second after the link comes up. A missing file
// means IPv6 is disabled, which is not an error.
func disableDAD(ifName string) error {
	err := writeSysctl(filepath.Join("net/ipv6/conf", ifName, "accept_dad"), "0")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// readSysctlUint reads one numeric sysctl given as a path under /proc/sys.
// A missing file (a module not loaded, so nothing to count) reads as 0.
func readSysctlUint(name string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(procSys, name))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read sysctl %s: %w", name, err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("sysctl %s: %w", name, err)
	}
	return v, nil
}
