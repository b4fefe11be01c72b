package model_test

import (
	"context"
	"os"
	"testing"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var server *etcdtest.Server

func TestMain(m *testing.M) {
	os.Exit(etcdtest.Main(m, func(s *etcdtest.Server) { server = s }))
}

// newStore returns a store under a prefix of the test's own, and the client.
func newStore(t *testing.T) (*model.Store, *clientv3.Client) {
	t.Helper()
	cli := server.Client(t)
	st := model.New(cli, etcdtest.Prefix(t))
	if err := st.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st, cli
}
