package model

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors. Callers branch on them with errors.Is; every error the
// package returns wraps one of them (or an etcd error wrapped in
// ErrUnavailable) with the context of what was being done.
var (
	// ErrInvalidName: a pool, namespace or egress name that is not a
	// DNS-1123 label.
	ErrInvalidName = errors.New("invalid name")
	// ErrInvalidCIDR: a subnet that does not parse, is not canonical
	// (host bits set), or mixes families wrongly.
	ErrInvalidCIDR = errors.New("invalid CIDR")
	// ErrInvalidBlockSize: blocks larger than the subnet, or more than
	// MaxBlocksPerSubnet of them.
	ErrInvalidBlockSize = errors.New("invalid block size")
	// ErrSubnetOverlap: the subnet overlaps a subnet of some pool.
	ErrSubnetOverlap = errors.New("subnet overlaps an existing subnet")
	// ErrPoolExists: a pool of that name already exists.
	ErrPoolExists = errors.New("pool already exists")
	// ErrPoolNotFound: no pool of that name.
	ErrPoolNotFound = errors.New("pool not found")
	// ErrPoolInUse: the pool still has blocks handed to nodes.
	ErrPoolInUse = errors.New("pool has blocks in use")
	// ErrPoolExhausted: every block of the pool is owned by some node.
	ErrPoolExhausted = errors.New("pool exhausted")
	// ErrDrained: the pool or subnet is drained, so it gives no new
	// block. Errors of AcquireBlock that wrap it wrap ErrPoolExhausted too.
	ErrDrained = errors.New("drained")
	// ErrSubnetNotFound: the pool has no subnet with that prefix.
	ErrSubnetNotFound = errors.New("subnet not found")
	// ErrNotDrained: a subnet must be drained before it is removed.
	ErrNotDrained = errors.New("subnet not drained")
	// ErrSubnetInUse: nodes still own blocks of the subnet (errors
	// wrapping it are *SubnetInUseError, which names them).
	ErrSubnetInUse = errors.New("subnet has blocks in use")
	// ErrLastSubnet: the pool's only subnet cannot be removed; delete the
	// pool instead.
	ErrLastSubnet = errors.New("last subnet of the pool")
	// ErrBlockLost: the block is no longer owned by the caller (released
	// or reclaimed since the caller learned of it).
	ErrBlockLost = errors.New("block no longer owned")
	// ErrBlockInUse: the block still holds addresses.
	ErrBlockInUse = errors.New("block has addresses in use")
	// ErrAddressInUse: the address key already exists.
	ErrAddressInUse = errors.New("address already allocated")
	// ErrNotOwner: the record now belongs to someone else; nothing was changed.
	ErrNotOwner = errors.New("record belongs to another owner")
	// ErrNotFound: no such record.
	ErrNotFound = errors.New("not found")
	// ErrSchemaVersion: the data in etcd was written by a newer Coil.
	ErrSchemaVersion = errors.New("unsupported schema version")
	// ErrUnavailable: etcd could not be reached or did not answer in time.
	ErrUnavailable = errors.New("etcd unavailable")
	// ErrCorrupt: a value in etcd could not be decoded.
	ErrCorrupt = errors.New("corrupt record")
	// ErrNoDestination: an egress without destinations.
	ErrNoDestination = errors.New("egress has no destination")
	// ErrDuplicateDestination: a destination given twice in one egress.
	ErrDuplicateDestination = errors.New("duplicate egress destination")
	// ErrDestinationNotFound: a destination to remove that the egress
	// does not have.
	ErrDestinationNotFound = errors.New("egress has no such destination")
	// ErrInvalidChange: an edit of an egress's destinations that
	// contradicts itself (replace and add, add and remove the same one).
	ErrInvalidChange = errors.New("invalid destination change")
	// ErrInvalidGateways: managed gateways (replicas, image) an egress
	// cannot have.
	ErrInvalidGateways = errors.New("invalid egress gateways")
	// ErrEgressExists: an egress of that namespace and name already exists.
	ErrEgressExists = errors.New("egress already exists")
	// ErrEgressNotFound: no egress of that namespace and name.
	ErrEgressNotFound = errors.New("egress not found")
	// ErrVNIExhausted: every VNI is held by some egress.
	ErrVNIExhausted = errors.New("no free VNI")
	// ErrOutcomeUnknown: etcd's answer to a write was lost and asking
	// again did not settle whether it was applied. Errors wrapping it wrap
	// ErrUnavailable too; the caller must treat the write as possibly
	// done (never hand out what it may have taken) and repeat it later.
	ErrOutcomeUnknown = errors.New("outcome of the write unknown")
	// ErrClusterMismatch: the key prefix is stamped with another
	// Kubernetes cluster's identity (Store.StampCluster).
	ErrClusterMismatch = errors.New("etcd prefix belongs to another cluster")
	// ErrInvalidCluster: an empty cluster identity.
	ErrInvalidCluster = errors.New("invalid cluster identity")
	// ErrConflict: a write lost to concurrent writers on every attempt.
	// Errors wrapping it wrap ErrUnavailable too: trying later is the
	// remedy.
	ErrConflict = errors.New("too many conflicting writes")
)

// ErrEtcd marks a request etcd answered with a refusal that retrying will
// not fix: authentication, permissions, quota, a request too large.
var ErrEtcd = errors.New("etcd refused the request")

// etcdErr wraps an error of the etcd client so callers can tell a transient
// failure (ErrUnavailable: retry later) from a refusal (ErrEtcd: an
// operator must act, retrying in a loop would only hide it).
func etcdErr(op string, err error) error {
	if transient(err) {
		return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w: %w", op, ErrEtcd, err)
}

func transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true
	}
	code := status.Code(err)
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.Unknown:
		// Unknown covers errors that never reached the server.
		return true
	}
	return false
}
