package daemon_test

import (
	"os"
	"testing"

	nodetest "github.com/coil-project/coil/internal/testenv/node"
)

// env is the etcd and CNI bin directory the nodes of these tests share.
var env *nodetest.Env

func TestMain(m *testing.M) {
	os.Exit(nodetest.Main(m, "coild/daemon tests", func(e *nodetest.Env) { env = e }))
}
