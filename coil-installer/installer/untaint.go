package installer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// BootstrapTaint is the taint an administrator puts on nodes before Coil
// is installed (and on every node that joins), so that no pod is
// scheduled there before coild can give it an address. Untaint removes it,
// whatever its effect and value.
const BootstrapTaint = "coil.cybozu.com/bootstrap"

// DefaultPollInterval is how often Untaint asks coild whether it is ready.
const DefaultPollInterval = time.Second

// Readier is what Untaint needs of coild: the Ready call of the coild/api
// client.
type Readier interface {
	Ready(ctx context.Context) error
}

// UntaintConfig configures Untaint.
type UntaintConfig struct {
	// NodeName is the Node to untaint (required).
	NodeName string
	// TaintKey is the key of the taint to remove; empty means
	// BootstrapTaint.
	TaintKey string
	// Coild is asked for readiness.
	Coild Readier
	// Kube patches the Node.
	Kube kubernetes.Interface
	// PollInterval is the pause between readiness probes and between
	// retries of the API; 0 means DefaultPollInterval.
	PollInterval time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// Untaint waits until coild is ready, then removes the taint from the
// node; it returns when the node no longer has the taint or ctx ends.
// Errors the API server may recover from (conflicts, timeouts, overload,
// connection failures) are retried; a refusal that retrying cannot change
// (forbidden, node not found, invalid) is returned.
func Untaint(ctx context.Context, cfg UntaintConfig) error {
	if cfg.NodeName == "" || cfg.Coild == nil || cfg.Kube == nil {
		return errors.New("untaint: node name, coild client and Kubernetes client are required")
	}
	if cfg.TaintKey == "" {
		cfg.TaintKey = BootstrapTaint
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	if err := WaitReady(ctx, cfg.Coild, cfg.PollInterval, log); err != nil {
		return err
	}
	for {
		removed, err := RemoveTaint(ctx, cfg.Kube, cfg.NodeName, cfg.TaintKey)
		if err == nil {
			log.Info("node released to workloads", "node", cfg.NodeName, "taint", cfg.TaintKey, "removed", removed)
			return nil
		}
		if !retriable(err) {
			return err
		}
		log.Warn("removing the taint failed; retrying", "node", cfg.NodeName, "err", err)
		if serr := sleep(ctx, cfg.PollInterval); serr != nil {
			return fmt.Errorf("untaint node %s: %w (last error: %w)", cfg.NodeName, serr, err)
		}
	}
}

// WaitReady polls coild until it answers ready or ctx ends. It logs the
// first failure and then one line every 30 probes, not one per probe.
func WaitReady(ctx context.Context, coild Readier, interval time.Duration, log *slog.Logger) error {
	var last error
	for i := 0; ; i++ {
		err := coild.Ready(ctx)
		if err == nil {
			if i > 0 {
				log.Info("coild is ready", "probes", i+1)
			}
			return nil
		}
		if ctx.Err() != nil && last != nil {
			// The probe was cut short by ctx: report the last real answer.
			return fmt.Errorf("wait for coild to become ready: %w (last answer: %w)", ctx.Err(), last)
		}
		last = err
		if i%30 == 0 {
			log.Info("waiting for coild to become ready", "err", err)
		}
		if serr := sleep(ctx, interval); serr != nil {
			return fmt.Errorf("wait for coild to become ready: %w (last answer: %w)", serr, last)
		}
	}
}

// RemoveTaint removes every taint with key from the node and leaves the
// others as they are. It reports whether there was one. The write is a
// JSON merge patch of spec.taints that carries the resourceVersion the
// taints were read at, so a concurrent change of the node makes it fail
// with a conflict (and RemoveTaint read again) instead of overwriting
// taints another party just added. It needs get and patch on nodes.
func RemoveTaint(ctx context.Context, kube kubernetes.Interface, nodeName, key string) (bool, error) {
	for attempt := 0; ; attempt++ {
		node, err := kube.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("get node %s: %w", nodeName, err)
		}
		var keep []corev1.Taint
		for _, t := range node.Spec.Taints {
			if t.Key != key {
				keep = append(keep, t)
			}
		}
		if len(keep) == len(node.Spec.Taints) {
			return false, nil
		}
		patch, err := taintPatch(node.ResourceVersion, keep)
		if err != nil {
			return false, err
		}
		_, err = kube.CoreV1().Nodes().Patch(ctx, nodeName, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "coil-installer"})
		if apierrors.IsConflict(err) && attempt < 10 {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("remove taint %s from node %s: %w", key, nodeName, err)
		}
		return true, nil
	}
}

// taintPatch is the merge patch that sets spec.taints to taints (removes
// the field when none are left), guarded by resourceVersion.
func taintPatch(resourceVersion string, taints []corev1.Taint) ([]byte, error) {
	p := map[string]any{
		"metadata": map[string]any{"resourceVersion": resourceVersion},
		"spec":     map[string]any{"taints": taints}, // nil marshals as null: delete
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode taint patch: %w", err)
	}
	return b, nil
}

// retriable reports whether an API error may go away by itself.
func retriable(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return true // transport errors: the API server is unreachable for now
	}
	return apierrors.IsConflict(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) ||
		apierrors.IsTooManyRequests(err) || apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
