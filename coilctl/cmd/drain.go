package cmd

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/coil-project/coil/model"
	"github.com/spf13/cobra"
)

// parsePrefix reads the CIDR naming a subnet of a pool (either family of a
// dual-stack pair).
func parsePrefix(cidr string) (netip.Prefix, error) {
	s, err := model.ParseSubnet(cidr, "")
	if err != nil {
		return netip.Prefix{}, err
	}
	if s.IPv4.IsValid() {
		return s.IPv4, nil
	}
	return s.IPv6, nil
}

// newPoolDrainCommand is "pool drain" (drain) or "pool undrain" (!drain).
func newPoolDrainCommand(o *rootOptions, drain bool) *cobra.Command {
	var subnet string
	c := &cobra.Command{
		Use:   "drain NAME [--subnet CIDR]",
		Short: "Stop nodes from taking new blocks of a pool or one of its subnets",
		Long: `Drain the pool NAME, or with --subnet only its subnet CIDR (either prefix of
a dual-stack pair): no node takes a new block of it any more. Nothing is
taken away: pods keep their addresses, nodes keep the blocks they own and
allocate in them, and return each block once it is empty. Nodes needing a
new block take it from the pool's other subnets; a drained pool gives none.

The drain is one etcd transaction on the pool record, which every block
acquisition compares: an acquisition racing with it either committed
before it or picks again on the drained pool.

Move pods off with a rolling restart of their workloads, watch the IN-USE
column of 'coilctl pool show NAME' fall to 0, then remove the subnet with
'coilctl pool remove-subnet'. 'coilctl pool undrain' reverts a drain.`,
		Example: `  coilctl pool drain default --subnet 10.64.0.0/16
  coilctl pool drain old-pool`,
	}
	if !drain {
		c.Use = "undrain NAME [--subnet CIDR]"
		c.Short = "Let nodes take blocks of a drained pool or subnet again"
		c.Long = `Revert 'coilctl pool drain': nodes take new blocks of the pool NAME again.
Without --subnet the pool's mark and the marks of all its subnets are
cleared; with --subnet only that subnet's (a subnet of a pool that is
drained as a whole still gives nothing until the pool is undrained).`
		c.Example = `  coilctl pool undrain default --subnet 10.64.0.0/16
  coilctl pool undrain old-pool`
	}
	c.Args = exactArgs("NAME")
	c.ValidArgsFunction = o.completePoolNames
	c.RunE = func(cmd *cobra.Command, args []string) error {
		name := args[0]
		verb := map[bool]string{true: "drain", false: "undrain"}[drain]
		var prefix netip.Prefix
		what := fmt.Sprintf("pool %q", name)
		if subnet != "" {
			var err error
			if prefix, err = parsePrefix(subnet); err != nil {
				return fmt.Errorf("%s subnet of pool %q: %w", verb, name, err)
			}
			what = fmt.Sprintf("subnet %s of pool %q", prefix, name)
		}
		return o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
			// Read first: a pool that does not exist is reported without
			// the schema write of initSchema.
			if _, _, err := st.GetPool(ctx, name); err != nil {
				return err
			}
			if err := initSchema(ctx, st); err != nil {
				return err
			}
			changed, err := st.SetDrained(ctx, name, prefix, drain)
			if err != nil {
				return err
			}
			p, _, err := st.GetPool(ctx, name)
			if err != nil {
				return err
			}
			switch {
			case !changed && drain:
				fmt.Fprintf(o.stdout, "%s was already drained\n", what)
			case !changed:
				fmt.Fprintf(o.stdout, "%s was not drained\n", what)
			case drain:
				u, err := drainedUsage(ctx, st, p, prefix)
				if err != nil {
					return err
				}
				fmt.Fprintf(o.stdout, "%s drained: no node takes a new block of it; %d addresses in %d blocks stay until their pods go\n",
					what, u.AddressesInUse, u.BlocksOwned)
			default:
				fmt.Fprintf(o.stdout, "%s undrained: nodes take new blocks of it again\n", what)
			}
			if !drain && p.Drained {
				fmt.Fprintf(o.stdout, "pool %q itself is still drained ('coilctl pool undrain %s' clears it)\n", name, name)
			}
			return nil
		})
	}
	c.Flags().StringVar(&subnet, "subnet", "", "a subnet of the pool (CIDR; either prefix of a dual-stack pair) instead of the whole pool")
	return c
}

// drainedUsage counts what lives in the drained pool p, or in its subnet
// with the prefix subnet.
func drainedUsage(ctx context.Context, st *model.Store, p model.Pool, subnet netip.Prefix) (model.Capacity, error) {
	blocks, err := st.ListBlocks(ctx, p.Name)
	if err != nil {
		return model.Capacity{}, err
	}
	addrs, err := st.ListAddresses(ctx, p.Name)
	if err != nil {
		return model.Capacity{}, err
	}
	u := p.Usage(blocks, addrs)
	if !subnet.IsValid() {
		return u.Capacity, nil
	}
	for _, su := range u.Subnets {
		if su.Subnet.Contains(subnet) {
			return su.Capacity, nil
		}
	}
	return model.Capacity{}, nil
}

func newPoolRemoveSubnetCommand(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "remove-subnet NAME CIDR",
		Short: "Remove a drained subnet that no node uses any more",
		Long: `Remove the subnet CIDR (either prefix of a dual-stack pair) from the pool
NAME. The subnet must be drained first ('coilctl pool drain NAME --subnet
CIDR'), and no node may own a block of it: while one does, the command is
refused and names the nodes and how many blocks each holds. Nodes return
a block once its last pod is gone, so restart or move those pods first.

The check and the removal are one etcd transaction, so a block can not be
taken or kept in between. The pool's last subnet cannot be removed:
delete the pool instead.`,
		Example:           `  coilctl pool remove-subnet default 10.64.0.0/16`,
		Args:              exactArgs("NAME", "CIDR"),
		ValidArgsFunction: o.completePoolNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			prefix, err := parsePrefix(args[1])
			if err != nil {
				return fmt.Errorf("remove subnet from pool %q: %w", name, err)
			}
			return o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				if _, _, err := st.GetPool(ctx, name); err != nil {
					return err
				}
				if err := initSchema(ctx, st); err != nil {
					return err
				}
				err := st.RemoveSubnet(ctx, name, prefix)
				if errors.Is(err, model.ErrSubnetInUse) {
					return fmt.Errorf("%w (pods keep their addresses until they go; see 'coilctl pool show %s')", err, name)
				}
				if err != nil {
					return err
				}
				p, _, err := st.GetPool(ctx, name)
				if err != nil {
					return err
				}
				fmt.Fprintf(o.stdout, "subnet %s removed from pool %q, which now has %d blocks of %d addresses\n",
					prefix, name, p.NumBlocks(), p.BlockSize())
				return nil
			})
		},
	}
}
