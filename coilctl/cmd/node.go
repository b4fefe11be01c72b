package cmd

import (
	"context"
	"slices"
	"strconv"

	"github.com/coil-project/coil/model"
	"github.com/spf13/cobra"
)

func newNodeCommand(o *rootOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "node",
		Short: "Inspect what nodes own",
	}
	makeGroup(c)
	c.AddCommand(newNodeBlocksCommand(o))
	return c
}

func newNodeBlocksCommand(o *rootOptions) *cobra.Command {
	var out *outputOptions
	c := &cobra.Command{
		Use:   "blocks NODE",
		Short: "List the address blocks a node owns",
		Long: `List the blocks the node NODE owns in every pool, with how many of their
addresses are allocated. A node that owns nothing (or does not exist) has
an empty list.`,
		Example: `  coilctl node blocks worker-1
  coilctl node blocks worker-1 -o json`,
		Args:              exactArgs("NODE"),
		ValidArgsFunction: o.completeNodeNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			format, err := out.resolve()
			if err != nil {
				return err
			}
			view := nodeBlocksJSON{Node: args[0]}
			var blocks []model.Block
			err = o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				var err error
				if blocks, err = st.NodeBlocks(ctx, view.Node); err != nil {
					return err
				}
				sortBlocks(blocks, false)
				view.Blocks = make([]blockJSON, 0, len(blocks))
				// One read per block: a node owns a handful of blocks,
				// while listing every address of the cluster would grow
				// with the cluster.
				for _, b := range blocks {
					addrs, err := st.BlockAddresses(ctx, b)
					if err != nil {
						return err
					}
					view.Blocks = append(view.Blocks, newBlockJSON(b, len(addrs)))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if format == formatJSON {
				return writeJSON(o.stdout, view)
			}
			t := newTable(o.stdout, "POOL", "BLOCK", "USED", "FREE")
			for i, b := range blocks {
				t.row(b.Pool, b.String(), strconv.Itoa(view.Blocks[i].Used), strconv.Itoa(view.Blocks[i].Free))
			}
			return t.flush()
		},
	}
	out = addOutputFlags(c)
	return c
}

// completeNodeNames offers the nodes that own at least one block.
func (o *rootOptions) completeNodeNames(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	_ = o.complete(cmd, func(ctx context.Context, st *model.Store) error {
		blocks, err := st.ListBlocks(ctx, "")
		for _, b := range blocks {
			names = append(names, b.Node)
		}
		return err
	})
	slices.Sort(names)
	return slices.Compact(names), cobra.ShellCompDirectiveNoFileComp
}
