package cmd

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/coil-project/coil/model"
	"github.com/spf13/cobra"
)

func newPoolCommand(o *rootOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "pool",
		Short: "Create, extend, inspect and delete address pools",
		Long: `An address pool is a set of subnets (IPv4, IPv6, or dual-stack pairs) cut
into blocks of 2^SIZE addresses. Nodes take whole blocks and hand single
addresses of them to pods.`,
	}
	makeGroup(c)
	c.AddCommand(
		newPoolCreateCommand(o),
		newPoolAddSubnetCommand(o),
		newPoolListCommand(o),
		newPoolShowCommand(o),
		newPoolDrainCommand(o, true),
		newPoolDrainCommand(o, false),
		newPoolRemoveSubnetCommand(o),
		newPoolDeleteCommand(o),
	)
	return c
}

func newPoolCreateCommand(o *rootOptions) *cobra.Command {
	var ipv6 string
	c := &cobra.Command{
		Use:   "create NAME SUBNET SIZE",
		Short: "Create an address pool",
		Long: `Create the pool NAME from one subnet, cut into blocks of 2^SIZE addresses.

SUBNET is an IPv4 or IPv6 CIDR in canonical form (no host bits set). With
--ipv6, SUBNET must be IPv4 and is paired with the IPv6 subnet SUBNET6 of
the same size: every pod of the pool then gets one address of each family.
An IPv6 SUBNET alone makes an IPv6-only pool.

The subnet must not overlap any subnet of any pool. SIZE is at most 16, and
a subnet holds at most 2^20 blocks.`,
		Example: `  # IPv4 pool "default" of 10.64.0.0/14 in blocks of 32 addresses
  coilctl pool create default 10.64.0.0/14 5

  # dual-stack pool
  coilctl pool create dual 10.100.0.0/16 6 --ipv6 fd00:10:100::/112

  # IPv6-only pool
  coilctl pool create v6 fd00:20::/112 6`,
		Args: exactArgs("NAME", "SUBNET", "SIZE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			p, err := buildPool(name, args[1], ipv6, args[2])
			if err != nil {
				return fmt.Errorf("create pool %q: %w", name, err)
			}
			return o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				if err := initSchema(ctx, st); err != nil {
					return err
				}
				if err := st.CreatePool(ctx, p); err != nil {
					return err
				}
				fmt.Fprintf(o.stdout, "pool %q created: %s %s, %d blocks of %d addresses\n",
					p.Name, p.Family(), subnetsCell(p.Subnets), p.NumBlocks(), p.BlockSize())
				return nil
			})
		},
	}
	c.Flags().StringVar(&ipv6, "ipv6", "", "IPv6 subnet paired with the IPv4 SUBNET (dual-stack; both of equal size)")
	return c
}

// buildPool parses and validates the arguments of "pool create", so that
// bad input is refused before etcd is touched.
func buildPool(name, subnet, ipv6, size string) (model.Pool, error) {
	bits, err := strconv.Atoi(size)
	if err != nil {
		return model.Pool{}, fmt.Errorf("%w: SIZE %q is not a number of bits (blocks hold 2^SIZE addresses, SIZE in 0..%d)",
			model.ErrInvalidBlockSize, size, model.MaxBlockSizeBits)
	}
	sub, err := model.ParseSubnet(subnet, ipv6)
	if err != nil {
		return model.Pool{}, err
	}
	p := model.Pool{Name: name, BlockSizeBits: bits, Subnets: []model.Subnet{sub}}
	if err := p.Validate(); err != nil {
		return model.Pool{}, err
	}
	return p, nil
}

func newPoolAddSubnetCommand(o *rootOptions) *cobra.Command {
	var ipv6 string
	c := &cobra.Command{
		Use:   "add-subnet NAME SUBNET",
		Short: "Add a subnet to an existing pool",
		Long: `Add SUBNET to the pool NAME, which then has more blocks to hand out.

The subnet must serve the same families as the pool's other subnets (a
dual-stack pool takes SUBNET plus --ipv6 SUBNET6), must be large enough for
one block, and must not overlap any subnet of any pool.`,
		Example: `  coilctl pool add-subnet default 10.68.0.0/16
  coilctl pool add-subnet dual 10.101.0.0/16 --ipv6 fd00:10:101::/112`,
		Args:              exactArgs("NAME", "SUBNET"),
		ValidArgsFunction: o.completePoolNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			sub, err := model.ParseSubnet(args[1], ipv6)
			if err != nil {
				return fmt.Errorf("add subnet to pool %q: %w", name, err)
			}
			return o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				// Read first: a pool that does not exist is reported
				// without the schema write of initSchema.
				p, _, err := st.GetPool(ctx, name)
				if err != nil {
					return err
				}
				if err := initSchema(ctx, st); err != nil {
					return err
				}
				if err := st.AddSubnet(ctx, name, sub); err != nil {
					return err
				}
				p.Subnets = append(p.Subnets, sub)
				fmt.Fprintf(o.stdout, "subnet %s added to pool %q, which now has %d blocks of %d addresses\n",
					sub, name, p.NumBlocks(), p.BlockSize())
				return nil
			})
		},
	}
	c.Flags().StringVar(&ipv6, "ipv6", "", "IPv6 subnet paired with the IPv4 SUBNET (for a dual-stack pool)")
	return c
}

func newPoolListCommand(o *rootOptions) *cobra.Command {
	var out *outputOptions
	c := &cobra.Command{
		Use:   "list",
		Short: "List pools with their usage",
		Long: `List every pool: its block size (in addresses), families, subnets, how many
of its blocks nodes own, and how many addresses are allocated.`,
		Example: `  coilctl pool list
  coilctl pool list -o json`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := out.resolve()
			if err != nil {
				return err
			}
			var (
				pools []model.Pool
				view  poolListJSON
			)
			err = o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				var err error
				if pools, err = st.ListPools(ctx); err != nil {
					return err
				}
				blocks, err := st.ListBlocks(ctx, "")
				if err != nil {
					return err
				}
				addrs, err := st.ListAddresses(ctx, "")
				if err != nil {
					return err
				}
				view.Pools = make([]poolJSON, 0, len(pools))
				for _, p := range pools {
					view.Pools = append(view.Pools, newPoolJSON(p, blocks, addrs))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if format == formatJSON {
				return writeJSON(o.stdout, view)
			}
			t := newTable(o.stdout, "NAME", "BLOCK-SIZE", "FAMILY", "SUBNETS", "BLOCKS", "ADDRESSES", "DRAINED")
			for i, p := range view.Pools {
				t.row(p.Name, strconv.Itoa(p.BlockSize), p.Family, subnetsCell(pools[i].Subnets),
					fmt.Sprintf("%d/%d", p.Blocks.Used, p.Blocks.Total),
					fmt.Sprintf("%d/%d", p.Addresses.Used, p.Addresses.Capacity), drainedCell(pools[i]))
			}
			return t.flush()
		},
	}
	out = addOutputFlags(c)
	return c
}

func newPoolShowCommand(o *rootOptions) *cobra.Command {
	var out *outputOptions
	c := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a pool and the blocks nodes own in it",
		Example: `  coilctl pool show default
  coilctl pool show default --json`,
		Args:              exactArgs("NAME"),
		ValidArgsFunction: o.completePoolNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			format, err := out.resolve()
			if err != nil {
				return err
			}
			name := args[0]
			var (
				pool   model.Pool
				view   poolDetailJSON
				blocks []model.Block
			)
			err = o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				var err error
				if pool, _, err = st.GetPool(ctx, name); err != nil {
					return err
				}
				if blocks, err = st.ListBlocks(ctx, name); err != nil {
					return err
				}
				addrs, err := st.ListAddresses(ctx, name)
				if err != nil {
					return err
				}
				sortBlocks(blocks, true)
				used := countByBlock(addrs)
				view.poolJSON = newPoolJSON(pool, blocks, addrs)
				usage := pool.Usage(blocks, addrs)
				view.SubnetUsage = make([]subnetUsageJSON, 0, len(usage.Subnets))
				for _, su := range usage.Subnets {
					view.SubnetUsage = append(view.SubnetUsage, newSubnetUsageJSON(su))
				}
				view.OwnedBlocks = make([]blockJSON, 0, len(blocks))
				for _, b := range blocks {
					view.OwnedBlocks = append(view.OwnedBlocks, newBlockJSON(b, used[idOfBlock(b)]))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if format == formatJSON {
				return writeJSON(o.stdout, view)
			}
			return printPoolDetail(o, pool, blocks, view)
		},
	}
	out = addOutputFlags(c)
	return c
}

func printPoolDetail(o *rootOptions, pool model.Pool, blocks []model.Block, v poolDetailJSON) error {
	f := newFields(o.stdout)
	f.add("Name", "%s", v.Name)
	f.add("Family", "%s", v.Family)
	f.add("Block size", "%d addresses (%d bits)", v.BlockSize, v.BlockSizeBits)
	f.add("Subnets", "%s", subnetsCell(pool.Subnets))
	f.add("Drained", "%s", drainedCell(pool))
	f.add("Blocks", "%d of %d owned by nodes", v.Blocks.Used, v.Blocks.Total)
	f.add("Addresses", "%d used, %d free, %d in total", v.Addresses.Used, v.Addresses.Free, v.Addresses.Capacity)
	if err := f.flush(); err != nil {
		return err
	}
	// Per subnet: what a drain has left to move (IN-USE of a drained one).
	fmt.Fprintln(o.stdout)
	st := newTable(o.stdout, "SUBNET", "STATE", "BLOCKS", "IN-USE", "CAPACITY")
	for _, su := range v.SubnetUsage {
		state := "active"
		if su.Drained {
			state = "drained"
		}
		st.row(pool.Subnets[su.Index].String(), state, fmt.Sprintf("%d/%d", su.Blocks.Used, su.Blocks.Total),
			strconv.Itoa(su.Addresses.Used), strconv.Itoa(su.Addresses.Capacity))
	}
	if err := st.flush(); err != nil {
		return err
	}
	fmt.Fprintln(o.stdout)
	t := newTable(o.stdout, "NODE", "BLOCK", "USED", "FREE")
	for i, b := range blocks {
		bv := v.OwnedBlocks[i]
		t.row(b.Node, b.String(), strconv.Itoa(bv.Used), strconv.Itoa(bv.Free))
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(o.stdout, "\nTotal: %d addresses used, %d free in the %d owned blocks\n",
		v.Addresses.Used, v.Addresses.FreeInOwnedBlocks, v.Blocks.Used)
	return nil
}

func newPoolDeleteCommand(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a pool that no node uses",
		Long: `Delete the pool NAME. It is refused while any node owns a block of the
pool: free the pods' addresses first (nodes return a block once it is
empty), or let coil-controller reclaim the blocks of deleted nodes.`,
		Example:           `  coilctl pool delete old-pool`,
		Args:              exactArgs("NAME"),
		ValidArgsFunction: o.completePoolNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			return o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				// Read first: a pool that does not exist is reported
				// without the schema write of initSchema.
				if _, _, err := st.GetPool(ctx, name); err != nil {
					return err
				}
				if err := initSchema(ctx, st); err != nil {
					return err
				}
				err := st.DeletePool(ctx, name)
				if errors.Is(err, model.ErrPoolInUse) {
					return fmt.Errorf("%w (see 'coilctl pool show %s')", err, name)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(o.stdout, "pool %q deleted\n", name)
				return nil
			})
		},
	}
}

// completePoolNames offers the names of existing pools for a command's
// first argument.
func (o *rootOptions) completePoolNames(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	// A completion that cannot reach etcd offers nothing rather than an
	// error: the shell has no place to show it.
	_ = o.complete(cmd, func(ctx context.Context, st *model.Store) error {
		pools, err := st.ListPools(ctx)
		for _, p := range pools {
			names = append(names, p.Name)
		}
		return err
	})
	return names, cobra.ShellCompDirectiveNoFileComp
}
