package cmd

import (
	"context"
	"fmt"
	"time"

	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/spf13/cobra"
)

func newCompletionCommand(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh",
		Short: "Print a shell completion script",
		Long: `Print a completion script for bash or zsh. Besides commands and flags it
completes pool, node and egress names, read from etcd with the same --etcd-*
flags and COILCTL_* variables as the commands themselves.`,
		Example: `  # bash, current shell (needs the bash-completion package)
  source <(coilctl completion bash)

  # bash, every shell
  coilctl completion bash > /etc/bash_completion.d/coilctl

  # zsh ("autoload -U compinit; compinit" must run first)
  coilctl completion zsh > "${fpath[1]}/_coilctl"`,
		ValidArgs: []string{"bash", "zsh"},
		Args:      exactArgs("bash|zsh"),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "bash":
				return cmd.Root().GenBashCompletionV2(o.stdout, true)
			case "zsh":
				return cmd.Root().GenZshCompletion(o.stdout)
			default:
				return usagef("unsupported shell %q (use bash or zsh)", args[0])
			}
		},
	}
}

// completionTimeout caps how long a shell completion waits for etcd: a
// shell frozen for the full --etcd-timeout on every TAB is worse than no
// suggestion.
const completionTimeout = 2 * time.Second

// complete runs fn against etcd for a shell completion. Cobra runs no
// PersistentPreRunE for completions, so the COILCTL_* variables are applied
// here. Errors are returned unexplained: the shell has nowhere to show them.
func (o *rootOptions) complete(cmd *cobra.Command, fn func(ctx context.Context, st *model.Store) error) error {
	if err := etcdconfig.ApplyEnv(cmd.Root().PersistentFlags(), EnvPrefix); err != nil {
		return err
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, min(o.etcd.Timeout, completionTimeout))
	defer cancel()
	if err := o.useStore(ctx, fn); err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	return nil
}
