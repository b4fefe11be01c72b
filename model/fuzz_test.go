package model_test

import (
	"errors"
	"testing"

	"github.com/coil-project/coil/model"
)

// The fuzz targets feed arbitrary keys and values to the decoders of etcd
// records: none may panic, every failure must wrap ErrCorrupt, and what
// they accept must be safe to use (a block's size within bounds, an
// address inside the key's place).

var fuzzStore = model.NewWithKV(nil, "/coil/")

func checkCorrupt(t *testing.T, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, model.ErrCorrupt) {
		t.Fatalf("error %v does not wrap ErrCorrupt", err)
	}
}

func FuzzDecodeBlock(f *testing.F) {
	f.Add("/coil/blocks/default/0/3", []byte(`{"pool":"default","subnet":0,"index":3,"ipv4":"10.64.0.96/27","ipv6":"fd00:64::60/123","node":"node-1"}`))
	f.Add("/coil/blocks/default/0/9", []byte(`{"pool":"default","subnet":0,"index":9,"node":"n"}`))
	f.Fuzz(func(t *testing.T, key string, val []byte) {
		b, err := fuzzStore.DecodeBlock(key, val)
		checkCorrupt(t, err)
		if err != nil {
			return
		}
		if n := b.Size(); n < 1 || n > 1<<model.MaxBlockSizeBits {
			t.Fatalf("accepted block %s of size %d", b.ID(), n)
		}
		b.AddressAt(b.Size() - 1)
	})
}

func FuzzDecodeAddress(f *testing.F) {
	f.Add("/coil/addresses/default/0/3/5", []byte(`{"pool":"default","subnet":0,"block":3,"offset":5,"ipv4":"10.64.0.101","node":"n","containerID":"c","interface":"eth0","network":"k8s"}`))
	f.Add("/coil/addresses/default/0/3/5", []byte(`{"pool":`))
	f.Fuzz(func(t *testing.T, key string, val []byte) {
		a, err := fuzzStore.DecodeAddress(key, val)
		checkCorrupt(t, err)
		if err == nil && (a.Offset < 0 || a.Offset >= 1<<model.MaxBlockSizeBits || len(a.IPs()) == 0) {
			t.Fatalf("accepted address %+v", a)
		}
	})
}

func FuzzDecodePool(f *testing.F) {
	f.Add("/coil/pools/default", []byte(`{"name":"default","blockSizeBits":5,"subnets":[{"ipv4":"10.64.0.0/16"}]}`))
	f.Fuzz(func(t *testing.T, key string, val []byte) {
		p, err := fuzzStore.DecodePool(key, val)
		checkCorrupt(t, err)
		if err == nil {
			p.NumBlocks()
		}
	})
}

func FuzzDecodeNode(f *testing.F) {
	f.Add("/coil/nodes/node-1", []byte(`{"name":"node-1","addresses":["192.168.10.11"]}`))
	f.Fuzz(func(t *testing.T, key string, val []byte) {
		_, err := fuzzStore.DecodeNode(key, val)
		checkCorrupt(t, err)
	})
}

func FuzzDecodeEgress(f *testing.F) {
	f.Add("/coil/egresses/internet/nat", []byte(`{"namespace":"internet","name":"nat","destinations":["0.0.0.0/0"],"vni":7}`))
	f.Fuzz(func(t *testing.T, key string, val []byte) {
		_, err := fuzzStore.DecodeEgress(key, val)
		checkCorrupt(t, err)
	})
}
