package etcdtest

import (
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// CommitHook runs in place of a transaction's Commit: then holds the
// operations the transaction's Then was given, and commit sends it (the
// hook calls it once, or fails without sending).
type CommitHook func(then []clientv3.Op, commit func() (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error)

// Writes reports whether then, a transaction's Then operations, writes
// anything: test KVs that act on the next write let read-only
// transactions (a search for a free block) pass.
func Writes(then []clientv3.Op) bool {
	return slices.ContainsFunc(then, func(op clientv3.Op) bool { return !op.IsGet() })
}

// HookTxn wraps txn so that its Commit goes through hook: a KV wrapper that
// counts, records or holds transactions returns HookTxn(kv.Txn(ctx), ...)
// from its Txn.
func HookTxn(txn clientv3.Txn, hook CommitHook) clientv3.Txn {
	return &hookedTxn{Txn: txn, hook: hook}
}

type hookedTxn struct {
	clientv3.Txn
	hook CommitHook
	then []clientv3.Op
}

func (t *hookedTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *hookedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.then = append(t.then, ops...)
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *hookedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *hookedTxn) Commit() (*clientv3.TxnResponse, error) {
	return t.hook(t.then, t.Txn.Commit)
}
