package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/google/uuid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
)

// ErrLeadershipLost is returned by LeaderElection.Run when the lease could
// not be renewed in time. The process should exit: another replica may
// already be acting, and a fresh start is the simplest way back to a
// consistent state.
var ErrLeadershipLost = errors.New("leader lease lost")

// Lease timing defaults, the same as kube-controller-manager's.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
	// DefaultLeaseName is the name of the Lease object.
	DefaultLeaseName = "coil-controller"
)

// LeaderElection runs work only while this replica holds a Lease, so that
// of several replicas at most one acts at a time.
type LeaderElection struct {
	Client    kubernetes.Interface
	Namespace string
	// Name of the Lease; DefaultLeaseName when empty.
	Name string
	// Identity of this replica; hostname plus a random suffix when empty.
	Identity string
	// Lease timing; defaults above when zero. RenewDeadline must be
	// shorter than LeaseDuration: the gap is the time work has to stop
	// after a failed renewal before another replica may take over.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// OnLeading, if set, is told when this replica starts and stops acting.
	OnLeading func(leading bool)
	Logger    *slog.Logger
}

// Run campaigns for the lease and runs work while holding it. It returns
// nil after ctx is done, ErrLeadershipLost if the lease was lost, or the
// error of work if work returned on its own.
//
// The lease is handed over only after work has returned: on shutdown, ctx
// stops work first and the lease is released after that, so a successor
// never overlaps with a replica still finishing a write.
func (l LeaderElection) Run(ctx context.Context, work func(context.Context) error) error {
	log := l.Logger
	if log == nil {
		log = slog.Default()
	}
	id := l.Identity
	if id == "" {
		host, _ := os.Hostname()
		id = host + "_" + uuid.NewString()
	}
	name := l.Name
	if name == "" {
		name = DefaultLeaseName
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: l.Namespace, Name: name},
		Client:     l.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}

	// electCtx is cancelled only once work has stopped (or never started);
	// it stops the elector, and Run then releases the lease itself.
	electCtx, stopElect := context.WithCancel(context.Background())
	defer stopElect()

	// mu orders the two ways of ending: ctx done while campaigning (stop
	// the elector at once) and ctx done while leading (stop work first,
	// then the elector). Without it, a lease won just as ctx ends could be
	// released while work starts.
	var (
		mu       sync.Mutex
		leading  bool
		stopping bool
		running  chan struct{} // closed when work returns
		workErr  error
		lost     bool
	)
	stopOnCancel := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		stopping = true
		if !leading {
			stopElect()
		}
	})
	defer stopOnCancel()

	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:          lock,
		Name:          name,
		LeaseDuration: orDefault(l.LeaseDuration, DefaultLeaseDuration),
		RenewDeadline: orDefault(l.RenewDeadline, DefaultRenewDeadline),
		RetryPeriod:   orDefault(l.RetryPeriod, DefaultRetryPeriod),
		// The elector would release the lease as soon as electCtx ends,
		// possibly while work is still finishing; Run releases it itself
		// once work has returned.
		ReleaseOnCancel: false,
		Callbacks: leaderelection.LeaderCallbacks{
			// client-go starts this in a goroutine it does not wait for;
			// Run waits for it through running.
			OnStartedLeading: func(leCtx context.Context) {
				mu.Lock()
				if stopping {
					mu.Unlock()
					return
				}
				leading = true
				done := make(chan struct{})
				running = done
				mu.Unlock()
				defer close(done)

				// Work stops when the lease is lost (leCtx) or on shutdown (ctx).
				workCtx, cancel := context.WithCancel(leCtx)
				defer cancel()
				stop := context.AfterFunc(ctx, cancel)
				defer stop()
				log.Info("acquired leader lease", "lease", l.Namespace+"/"+name, "identity", id)
				if l.OnLeading != nil {
					l.OnLeading(true)
				}
				err := work(workCtx)
				if l.OnLeading != nil {
					l.OnLeading(false)
				}
				mu.Lock()
				workErr = err
				lost = leCtx.Err() != nil && ctx.Err() == nil
				leading = false
				mu.Unlock()
				// Work has stopped: only now may the lease be released.
				stopElect()
			},
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	log.Info("campaigning for leader lease", "lease", l.Namespace+"/"+name, "identity", id)
	le.Run(electCtx)

	// From here on a late OnStartedLeading (client-go starts it in a
	// goroutine that may not have run yet) must not start work.
	mu.Lock()
	stopping = true
	done := running
	mu.Unlock()
	if done != nil {
		<-done
	}
	mu.Lock()
	defer mu.Unlock()
	if ctx.Err() == nil && (lost || done == nil) {
		// The elector gave up without being asked to: the lease was
		// lost, before or while working.
		log.Warn("leader lease lost", "lease", l.Namespace+"/"+name, "identity", id)
		return ErrLeadershipLost
	}
	// Work has returned (or never started) and the elector has stopped
	// renewing: hand the lease over now rather than making the successor
	// wait for it to expire. releaseLease changes nothing unless this
	// replica is still the holder.
	rctx, cancel := context.WithTimeout(context.Background(), orDefault(l.RenewDeadline, DefaultRenewDeadline))
	defer cancel()
	if err := releaseLease(rctx, lock, id); err != nil {
		log.Warn("could not release leader lease; it will expire", "err", err)
	} else if done != nil {
		log.Info("released leader lease", "lease", l.Namespace+"/"+name, "identity", id)
	}
	if workErr != nil && ctx.Err() == nil {
		return fmt.Errorf("while leading: %w", workErr)
	}
	return nil
}

// releaseLease empties the holder of the lease if it is still id, with a
// one-second duration so that others take it at their next try. The update
// is guarded by the resourceVersion read just before.
func releaseLease(ctx context.Context, lock resourcelock.Interface, id string) error {
	rec, _, err := lock.Get(ctx)
	if apierrors.IsNotFound(err) {
		return nil // nobody ever held it
	}
	if err != nil {
		return fmt.Errorf("read lease: %w", err)
	}
	if rec.HolderIdentity != id {
		return nil
	}
	now := metav1.NewTime(time.Now())
	err = lock.Update(ctx, resourcelock.LeaderElectionRecord{
		LeaseDurationSeconds: 1,
		AcquireTime:          now,
		RenewTime:            now,
		LeaderTransitions:    rec.LeaderTransitions,
	})
	if err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// NewEventRecorder returns a recorder that writes events through client,
// and a function that flushes and stops it.
func NewEventRecorder(client kubernetes.Interface) (record.EventRecorder, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	r := b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "coil-controller"})
	return r, b.Shutdown
}
