// Package cmd is coilctl's command tree. It is a package of its own, apart
// from main, so that tests can run the very same commands with their own
// arguments and writers.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"

	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes of coilctl. Scripts may tell "you called it wrong" (ExitUsage)
// from "it could not be done" (ExitFailure).
const (
	// ExitOK means the command did what it was asked.
	ExitOK = 0
	// ExitFailure means the command failed: bad input values, a refusal by
	// the state model (overlap, pool in use, ...) or etcd trouble.
	ExitFailure = 1
	// ExitUsage means the command line itself was wrong: unknown command or
	// flag, wrong number of arguments, unparsable flag value.
	ExitUsage = 2
)

// EnvPrefix prefixes the environment variables that stand in for the global
// --etcd-* flags: --etcd-endpoints is also read from COILCTL_ETCD_ENDPOINTS.
const EnvPrefix = "COILCTL"

// usageError marks a mistake in the command line, as opposed to a failure of
// the work it asked for, so that Run can point at --help and exit with
// ExitUsage.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error {
	return &usageError{err: fmt.Errorf(format, a...)}
}

// rootOptions holds what every command shares: the etcd connection flags
// and where results go.
type rootOptions struct {
	etcd   etcdconfig.Config
	stdout io.Writer
}

// NewRootCommand builds the complete coilctl command tree. Results and
// help go to stdout, cobra's own diagnostics to stderr. The tree does not
// print the errors its commands return (it is silenced): Run does, so that
// each is printed once and the exit code matches it.
func NewRootCommand(stdout, stderr io.Writer) *cobra.Command {
	o := &rootOptions{stdout: stdout}
	root := &cobra.Command{
		Use:   "coilctl",
		Short: "Manage Coil address pools and egresses, and inspect IPAM state in etcd",
		Long: `coilctl edits Coil's address pools and egresses, and shows which node owns
which address block and which pod holds which address. It talks to etcd
directly, so it works even when no coild is running.

Every --etcd-* flag can also be given as an environment variable:
--etcd-endpoints is read from COILCTL_ETCD_ENDPOINTS, --etcd-tls-ca from
COILCTL_ETCD_TLS_CA, and so on. A flag on the command line wins.`,
		// Errors are printed once, by Run, with a pointer to --help when
		// the command line was at fault; cobra would print them twice and
		// bury them under the full usage text.
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			// Only the etcd flags come from the environment: reading
			// per-command flags such as -o from it would make the same
			// command line print differently on different machines.
			if err := etcdconfig.ApplyEnv(cmd.Root().PersistentFlags(), EnvPrefix); err != nil {
				return &usageError{err: err}
			}
			return nil
		},
		CompletionOptions: cobra.CompletionOptions{
			// We provide our own "completion" command limited to the
			// shells we support and test.
			DisableDefaultCmd: true,
		},
	}
	makeGroup(root)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &usageError{err: err}
	})
	o.etcd.AddFlags(root.PersistentFlags())

	root.AddCommand(
		newPoolCommand(o),
		newNodeCommand(o),
		newAddressCommand(o),
		newEgressCommand(o),
		newCompletionCommand(o),
		newCheckCommand(o),
	)
	return root
}

// makeGroup turns a command that only holds subcommands into one that
// prints its help when called alone and fails on an unknown subcommand.
// Cobra's default for a non-runnable command is to print help and succeed
// whatever follows it, so a script calling "coilctl pool lsit" would never
// notice its typo.
func makeGroup(c *cobra.Command) {
	c.SuggestionsMinimumDistance = 2
	c.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf(" (did you mean %q?)", s[0])
		}
		return usagef("%s", msg)
	}
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		return cmd.Help()
	}
}

// exactArgs requires one argument per name and says which are missing, so
// that "coilctl pool create a 10.0.0.0/16" explains that SIZE is absent.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == len(names) {
			return nil
		}
		if len(names) == 0 {
			return usagef("%q takes no arguments, got %d", cmd.CommandPath(), len(args))
		}
		if len(args) < len(names) {
			return usagef("%q needs %s; missing %s", cmd.CommandPath(), strings.Join(names, " "), strings.Join(names[len(args):], " "))
		}
		return usagef("%q takes %d argument(s) (%s), got %d", cmd.CommandPath(), len(names), strings.Join(names, " "), len(args))
	}
}

// Run executes coilctl with args (without the program name), writing
// results to stdout and errors to stderr, and returns the process exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewRootCommand(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(stderr, "Error: %v\n", err)
	if ue := (*usageError)(nil); errors.As(err, &ue) {
		if cmd == nil {
			cmd = root
		}
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return ExitUsage
	}
	return ExitFailure
}

// withStore connects to etcd, runs fn with a store and a context bounded by
// --etcd-timeout, and disconnects. The one deadline covers the whole
// command, so an unreachable etcd fails the command within --etcd-timeout
// however many requests it would have made. Errors from talking to etcd
// are explained (see explain).
func (o *rootOptions) withStore(ctx context.Context, fn func(ctx context.Context, st *model.Store) error) error {
	ctx, cancel := o.etcd.RequestContext(ctx)
	defer cancel()
	return o.explain(ctx, o.useStore(ctx, fn))
}

// useStore is withStore without the deadline and the explanation of errors.
func (o *rootOptions) useStore(ctx context.Context, fn func(ctx context.Context, st *model.Store) error) error {
	for _, e := range o.etcd.Endpoints {
		if strings.HasPrefix(e, "@") {
			return fmt.Errorf("--etcd-endpoints %q: coilctl takes etcd URLs; a Service (@NAMESPACE/NAME) is for coild and coil-controller", e)
		}
	}
	cli, err := o.etcd.NewClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	st := model.New(cli, o.etcd.Prefix)
	st.SetReleaser(model.Releaser{Component: "coilctl", Host: operatorName()})
	return fn(ctx, st)
}

// operatorName is user@host, naming who ran coilctl in the release notes
// of the addresses it frees.
func operatorName() string {
	host, _ := os.Hostname()
	if u, err := user.Current(); err == nil {
		return u.Username + "@" + host
	}
	return host
}

// explain rewrites errors that come from talking to etcd, which the model
// reports as a bare gRPC or context error, into one that names the
// endpoints and the likely cause. Other errors pass unchanged.
func (o *rootOptions) explain(ctx context.Context, err error) error {
	// Besides the model's ErrUnavailable, a bare timeout can come from
	// creating the client: with --etcd-username it authenticates at once.
	if err == nil || !errors.Is(err, model.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	at := strings.Join(o.etcd.Endpoints, ",")
	switch {
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return fmt.Errorf("interrupted while talking to etcd at %s", at)
	case errors.Is(err, context.DeadlineExceeded):
		// The client retries a failed connection (refused, TLS handshake
		// rejected) until the deadline, so a timeout is how both an
		// unreachable etcd and a wrong certificate show up; find which.
		if cause := o.diagnose(); cause != "" {
			return fmt.Errorf("cannot reach etcd at %s: %s (%w)", at, cause, err)
		}
		return fmt.Errorf("cannot reach etcd at %s: no answer within --etcd-timeout %s (%w)", at, o.etcd.Timeout, err)
	case status.Code(err) == codes.Unavailable:
		return fmt.Errorf("cannot reach etcd at %s: %w", at, err)
	default:
		// Reached, but the request failed: authentication,
		// permissions, quota, or something else answering at that port.
		return fmt.Errorf("request to etcd at %s failed: %w", at, err)
	}
}

// initSchema records the schema version in a fresh etcd and refuses to
// write into data of a newer Coil. Only write commands call it, and only
// once their input has been checked, so that a rejected command leaves etcd
// exactly as it was.
func initSchema(ctx context.Context, st *model.Store) error {
	if err := st.Init(ctx); err != nil {
		return fmt.Errorf("check schema under %s: %w", st.Prefix(), err)
	}
	return nil
}
