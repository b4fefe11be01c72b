package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// ownNetNSEnv marks the run of a test inside its own network namespace.
const ownNetNSEnv = "COIL_TEST_OWN_NETNS"

// InOwnNetNS lets a test use an address that is neither loopback nor the
// host's: the kube-apiserver refuses loopback addresses in EndpointSlices,
// and tests must not add addresses to the host's network namespace. Called
// first in a test, it runs that test again as a child process in a network
// namespace of its own (unshare -n: it goes away with the process), with lo
// up and addr on it, logs its output, fails if it failed, and returns
// false: the caller returns too. In the child it returns true and the test
// goes on there. It skips the test when not root.
func InOwnNetNS(t *testing.T, addr string) bool {
	t.Helper()
	if os.Getenv(ownNetNSEnv) == t.Name() {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	script := "ip link set lo up && ip addr add " + addr + " dev lo && exec \"$0\" \"$@\""
	cmd := exec.Command("unshare", "-n", "--", "sh", "-c", script, os.Args[0],
		"-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), ownNetNSEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	t.Logf("in a network namespace of its own:\n%s", out)
	if err != nil {
		t.Fatalf("the test in its own network namespace: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatal("the test did not run in its own network namespace")
	}
	return false
}
