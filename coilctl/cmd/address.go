package cmd

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/coil-project/coil/model"
	"github.com/spf13/cobra"
)

// Values of addressInfoJSON.Status.
const (
	statusAllocated = "allocated"
	statusFree      = "free"
)

// addressInfoJSON is the output of "address info".
type addressInfoJSON struct {
	IP    string           `json:"ip"`
	Pool  string           `json:"pool"`
	Block addressBlockJSON `json:"block"`
	// Node owns the block; "" when no node does.
	Node string `json:"node"`
	// Status is "allocated" or "free".
	Status string `json:"status"`
	// Holder is null when the address is free.
	Holder *holderJSON `json:"holder"`
}

// addressBlockJSON names the block an address falls in, owned or not.
type addressBlockJSON struct {
	ID   string `json:"id"`
	IPv4 string `json:"ipv4,omitempty"`
	IPv6 string `json:"ipv6,omitempty"`
}

// holderJSON is who an allocated address is for. In a dual-stack pool one
// allocation holds an address of each family; both are shown.
type holderJSON struct {
	IPv4        string    `json:"ipv4,omitempty"`
	IPv6        string    `json:"ipv6,omitempty"`
	Namespace   string    `json:"namespace"`
	Pod         string    `json:"pod"`
	PodUID      string    `json:"podUID,omitempty"`
	ContainerID string    `json:"containerID"`
	Interface   string    `json:"interface"`
	CreatedAt   time.Time `json:"createdAt"`
}

func newAddressCommand(o *rootOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "address",
		Short: "Inspect and free single addresses",
	}
	makeGroup(c)
	c.AddCommand(newAddressInfoCommand(o), newAddressFreeCommand(o))
	c.AddCommand(newAddressHistoryCommand(o))
	return c
}

// parseAddress parses an IP address argument.
func parseAddress(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ADDRESS %q is not an IP address", s)
	}
	if ip.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("ADDRESS %q has a zone; pool addresses have none", s)
	}
	return ip.Unmap(), nil
}

func newAddressInfoCommand(o *rootOptions) *cobra.Command {
	var out *outputOptions
	c := &cobra.Command{
		Use:   "info ADDRESS",
		Short: "Show which pool, block, node and pod an address belongs to",
		Long: `Show the pool and block ADDRESS falls in, the node owning that block, and
the pod holding the address, or that it is free. An address outside every
pool is an error.`,
		Example: `  coilctl address info 10.64.0.7
  coilctl address info fd00:10:100::7 -o json`,
		Args: exactArgs("ADDRESS"),
		RunE: func(cmd *cobra.Command, args []string) error {
			format, err := out.resolve()
			if err != nil {
				return err
			}
			ip, err := parseAddress(args[0])
			if err != nil {
				return err
			}
			var view addressInfoJSON
			err = o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				info, err := st.FindAddress(ctx, ip)
				if err != nil {
					return err
				}
				blk, err := blockOf(ctx, st, info)
				if err != nil {
					return err
				}
				view = newAddressInfoJSON(info, blk)
				return nil
			})
			if err != nil {
				return err
			}
			if format == formatJSON {
				return writeJSON(o.stdout, view)
			}
			return printAddressInfo(o, view)
		},
	}
	out = addOutputFlags(c)
	return c
}

// blockOf describes the block of a found address. The model returns the
// block record only when a node owns it; for a free block the CIDRs are
// computed from the pool, so that the operator still learns where the
// address would be routed.
func blockOf(ctx context.Context, st *model.Store, info model.AddressInfo) (addressBlockJSON, error) {
	if b := info.Block; b != nil {
		return addressBlockJSON{ID: b.ID(), IPv4: textOrEmpty(b.IPv4), IPv6: textOrEmpty(b.IPv6)}, nil
	}
	p, _, err := st.GetPool(ctx, info.Pool)
	if err != nil {
		return addressBlockJSON{}, err
	}
	sub, idx, _, ok := p.Locate(info.IP)
	if !ok {
		// The pool changed between the two reads; say what we know.
		return addressBlockJSON{}, nil
	}
	v4, v6 := p.BlockPrefixes(sub, idx)
	b := model.Block{Pool: p.Name, Subnet: sub, Index: idx}
	return addressBlockJSON{ID: b.ID(), IPv4: textOrEmpty(v4), IPv6: textOrEmpty(v6)}, nil
}

func newAddressInfoJSON(info model.AddressInfo, blk addressBlockJSON) addressInfoJSON {
	v := addressInfoJSON{IP: info.IP.String(), Pool: info.Pool, Block: blk, Status: statusFree}
	if info.Block != nil {
		v.Node = info.Block.Node
	}
	if a := info.Address; a != nil {
		v.Status = statusAllocated
		v.Holder = &holderJSON{
			IPv4: textOrEmpty(a.IPv4), IPv6: textOrEmpty(a.IPv6),
			Namespace: a.Namespace, Pod: a.Pod, PodUID: a.PodUID, ContainerID: a.ContainerID, Interface: a.Interface,
			CreatedAt: a.CreatedAt,
		}
	}
	return v
}

func printAddressInfo(o *rootOptions, v addressInfoJSON) error {
	f := newFields(o.stdout)
	f.add("Address", "%s", v.IP)
	f.add("Pool", "%s", v.Pool)
	f.add("Block", "%s (%s)", joinNonEmpty(v.Block.IPv4, v.Block.IPv6), v.Block.ID)
	if v.Node != "" {
		f.add("Node", "%s", v.Node)
	} else {
		f.add("Node", "none (no node owns the block)")
	}
	f.add("Status", "%s", v.Status)
	if h := v.Holder; h != nil {
		if h.IPv4 != "" && h.IPv6 != "" {
			f.add("Allocation", "%s (dual-stack pair)", joinNonEmpty(h.IPv4, h.IPv6))
		}
		f.add("Namespace", "%s", h.Namespace)
		f.add("Pod", "%s", h.Pod)
		if h.PodUID != "" {
			f.add("Pod UID", "%s", h.PodUID)
		}
		f.add("Container", "%s", h.ContainerID)
		f.add("Interface", "%s", h.Interface)
		f.add("Created", "%s", h.CreatedAt.UTC().Format(time.RFC3339))
	}
	return f.flush()
}

func newAddressFreeCommand(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "free ADDRESS",
		Short: "Release an allocated address",
		Long: `Release the allocation holding ADDRESS (in a dual-stack pool, the pair it
belongs to). Use it for addresses leaked by pods that no longer exist.

The release is owner-checked: it deletes exactly the allocation that was
read, so if the address was freed and handed to another pod in between,
nothing is freed and the command fails. Freeing an address that is not
allocated is an error.

The node keeps its block; coild returns it to the pool once it is empty.`,
		Example: `  coilctl address free 10.64.0.7`,
		Args:    exactArgs("ADDRESS"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ip, err := parseAddress(args[0])
			if err != nil {
				return err
			}
			return o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				info, err := st.FindAddress(ctx, ip)
				if err != nil {
					return err
				}
				a := info.Address
				if a == nil {
					blk, err := blockOf(ctx, st, info)
					if err != nil {
						return err
					}
					owner := "which no node owns"
					if info.Block != nil {
						owner = "owned by node " + info.Block.Node
					}
					return fmt.Errorf("free %s: the address is not allocated (pool %q, block %s %s): nothing to free",
						ip, info.Pool, joinNonEmpty(blk.IPv4, blk.IPv6), owner)
				}
				if err := initSchema(ctx, st); err != nil {
					return err
				}
				if err := st.ReleaseAddress(ctx, *a); err != nil {
					if errors.Is(err, model.ErrNotOwner) {
						return fmt.Errorf("%w: it was re-allocated after it was read, so nothing was freed; see 'coilctl address info %s'", err, ip)
					}
					return err
				}
				fmt.Fprintf(o.stdout, "freed %s (pool %q, node %s) held by pod %s/%s, container %s, interface %s, since %s\n",
					joinAddrs(a.IPs()), a.Pool, a.Node, a.Namespace, a.Pod, a.ContainerID, a.Interface,
					a.CreatedAt.UTC().Format(time.RFC3339))
				return nil
			})
		},
	}
}

func joinNonEmpty(parts ...string) string {
	var kept []string
	for _, p := range parts {
		if p != "" {
			kept = append(kept, p)
		}
	}
	return strings.Join(kept, ",")
}

func joinAddrs(ips []netip.Addr) string {
	parts := make([]string, 0, len(ips))
	for _, ip := range ips {
		parts = append(parts, ip.String())
	}
	return strings.Join(parts, ",")
}
