package cmd

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/coil-project/coil/model"
	"github.com/spf13/cobra"
)

func newEgressCommand(o *rootOptions) *cobra.Command {
	c := &cobra.Command{
		Use:   "egress",
		Short: "Create, inspect, update and delete egress NAT definitions",
		Long: `An egress sends the traffic of opted-in client pods to some destinations
through gateway pods, which NAT it to their own addresses.

Gateways are the pods of the egress's NAMESPACE labelled
` + model.EgressGatewayLabel + `=NAME. A client pod of any namespace opts in with
the annotation ` + model.EgressClientAnnotationPrefix + `NAMESPACE: NAME. With --replicas, coil-controller
runs the gateway pods itself.`,
	}
	makeGroup(c)
	c.AddCommand(
		newEgressCreateCommand(o),
		newEgressListCommand(o),
		newEgressShowCommand(o),
		newEgressUpdateCommand(o),
		newEgressDeleteCommand(o),
	)
	return c
}

// egressJSON is an egress as "egress list" and "egress show" print it.
type egressJSON struct {
	Namespace    string    `json:"namespace"`
	Name         string    `json:"name"`
	VNI          uint32    `json:"vni"`
	Destinations []string  `json:"destinations"`
	CreatedAt    time.Time `json:"createdAt"`
	// Replicas is the number of gateway pods coil-controller runs; 0
	// when the user runs them.
	Replicas int32  `json:"replicas"`
	Image    string `json:"image,omitempty"`
}

// egressListJSON is the output of "egress list".
type egressListJSON struct {
	Egresses []egressJSON `json:"egresses"`
}

func newEgressJSON(e model.Egress) egressJSON {
	return egressJSON{
		Namespace: e.Namespace, Name: e.Name, VNI: e.VNI,
		Destinations: destinationStrings(e.Destinations), CreatedAt: e.CreatedAt,
		Replicas: e.Replicas, Image: e.Image,
	}
}

// egressSummary is the one line "egress create" and "egress update" print
// after the verb.
func egressSummary(e model.Egress) string {
	s := fmt.Sprintf("VNI %d, destinations %s", e.VNI, strings.Join(destinationStrings(e.Destinations), ","))
	if e.Managed() {
		s += fmt.Sprintf(", %d managed gateways", e.Replicas)
		if e.Image != "" {
			s += " of image " + e.Image
		}
	}
	return s
}

// gatewaysColumn is the GATEWAYS column of "egress list".
func gatewaysColumn(e model.Egress) string {
	if !e.Managed() {
		return "user"
	}
	return fmt.Sprintf("%d managed", e.Replicas)
}

// addGatewayFlags adds --replicas and --image to c.
func addGatewayFlags(c *cobra.Command, replicas *int32, image *string) {
	c.Flags().Int32Var(replicas, "replicas", 0, fmt.Sprintf("gateway pods coil-controller runs for the egress (0..%d); 0 leaves them to you", model.MaxGatewayReplicas))
	c.Flags().StringVar(image, "image", "", "image of the managed gateway pods (default: coil-controller's --egress-gateway-image, the Coil image)")
}

func destinationStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func newEgressCreateCommand(o *rootOptions) *cobra.Command {
	var destinations []string
	var replicas int32
	var image string
	c := &cobra.Command{
		Use:   "create NAMESPACE NAME --destinations CIDR[,CIDR...] [--replicas N [--image IMAGE]]",
		Short: "Create an egress",
		Long: `Create the egress NAME in NAMESPACE for the destinations given.

Each destination is an IPv4 or IPv6 CIDR in canonical form; 0.0.0.0/0 and
::/0 send everything that is not a pod, link-local or gateway address. The
egress gets a VXLAN network identifier (VNI) no other egress has.

With --replicas N, coil-controller runs N gateway pods for the egress: a
Deployment (pods spread over nodes) and a PodDisruptionBudget of
maxUnavailable 1, both named NAME-gateway in NAMESPACE, kept in step with
the egress and deleted with it. --image replaces the gateway image (the
Coil image by default); its entrypoint must keep running until SIGTERM.
Without --replicas, run gateway pods in NAMESPACE labelled
` + model.EgressGatewayLabel + `=NAME yourself. Either way NAMESPACE must take its addresses
from a pool that can reach the destinations. Annotate client pods
` + model.EgressClientAnnotationPrefix + `NAMESPACE=NAME.`,
		Example: `  coilctl egress create internet nat --destinations 0.0.0.0/0,::/0 --replicas 2
  coilctl egress create partners api --destinations 192.0.2.0/24 --destinations 2001:db8::/32`,
		Args: exactArgs("NAMESPACE", "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(destinations) == 0 {
				return usagef("%q needs --destinations CIDR[,CIDR...]", cmd.CommandPath())
			}
			if cmd.Flags().Changed("image") && replicas == 0 {
				return usagef("--image needs --replicas above 0: without it you run the gateway pods")
			}
			e := model.Egress{Namespace: args[0], Name: args[1], Replicas: replicas, Image: image}
			var err error
			if e.Destinations, err = model.ParseDestinations(destinations); err != nil {
				return fmt.Errorf("create egress %s: %w", e.Key(), err)
			}
			if err := e.Validate(); err != nil {
				return fmt.Errorf("create egress %s: %w", e.Key(), err)
			}
			return o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				if err := initSchema(ctx, st); err != nil {
					return err
				}
				created, err := st.CreateEgress(ctx, e)
				if err != nil {
					return err
				}
				fmt.Fprintf(o.stdout, "egress %q created: %s\n", created.Key(), egressSummary(created))
				return nil
			})
		},
	}
	c.Flags().StringSliceVar(&destinations, "destinations", nil, "destination CIDRs, comma-separated or repeated (required)")
	addGatewayFlags(c, &replicas, &image)
	return c
}

// egressUpdateJSON is the output of "egress update -o json": the egress as
// stored after the update and whether the update changed it.
type egressUpdateJSON struct {
	egressJSON
	Changed bool `json:"changed"`
}

func newEgressUpdateCommand(o *rootOptions) *cobra.Command {
	var set, add, remove []string
	var replicas int32
	var image string
	var out *outputOptions
	c := &cobra.Command{
		Use:   "update NAMESPACE NAME (--destinations CIDR[,CIDR...] | --add-destination CIDR | --remove-destination CIDR | --replicas N | --image IMAGE)...",
		Short: "Change the destinations or the managed gateways of an egress in place",
		Long: `Change the destinations of the egress NAME in NAMESPACE without deleting it:
its VNI stays, and every node changes only the routes of the destinations
that changed in its client pods, so connections to the others go on.

--destinations replaces the whole set. --add-destination and
--remove-destination (each repeatable, or comma-separated) edit it: the
removals apply first, then the additions. Adding a destination the egress
has, removing one it lacks, or leaving it without any is refused and
changes nothing.

--replicas sets how many gateway pods coil-controller runs (0 deletes its
Deployment and PodDisruptionBudget and leaves the gateways to you);
--image sets their image ("" for the default). coil-controller rolls the
Deployment over to the change.`,
		Example: `  coilctl egress update partners api --add-destination 198.51.100.0/24
  coilctl egress update internet nat --replicas 3
  coilctl egress update internet nat --image registry.example.com/coil:v1.0.1
  coilctl egress update partners api --remove-destination 192.0.2.0/24 --add-destination 203.0.113.0/24
  coilctl egress update internet nat --destinations 0.0.0.0/0,::/0 -o json`,
		Args:              exactArgs("NAMESPACE", "NAME"),
		ValidArgsFunction: o.completeEgresses,
		RunE: func(cmd *cobra.Command, args []string) error {
			format, err := out.resolve()
			if err != nil {
				return err
			}
			setReplicas, setImage := cmd.Flags().Changed("replicas"), cmd.Flags().Changed("image")
			if len(set) == 0 && len(add) == 0 && len(remove) == 0 && !setReplicas && !setImage {
				return usagef("%q needs --destinations, --add-destination, --remove-destination, --replicas or --image", cmd.CommandPath())
			}
			if len(set) > 0 && (len(add) > 0 || len(remove) > 0) {
				return usagef("--destinations replaces every destination and cannot be combined with --add-destination or --remove-destination")
			}
			key := args[0] + "/" + args[1]
			var change model.EgressChange
			if setReplicas {
				change.Replicas = &replicas
			}
			if setImage {
				change.Image = &image
			}
			for _, f := range []struct {
				in  []string
				out *[]netip.Prefix
			}{{set, &change.Destinations.Set}, {add, &change.Destinations.Add}, {remove, &change.Destinations.Remove}} {
				if *f.out, err = model.ParseDestinations(f.in); err != nil {
					return fmt.Errorf("update egress %s: %w", key, err)
				}
			}
			var updated model.Egress
			var changed bool
			err = o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				// Check the change on the current record first: a
				// refused change is reported without the schema
				// write of initSchema.
				cur, err := st.GetEgress(ctx, args[0], args[1])
				if err != nil {
					return err
				}
				if err := change.Apply(&cur); err != nil {
					return fmt.Errorf("update egress %s: %w", key, err)
				}
				if err := initSchema(ctx, st); err != nil {
					return err
				}
				updated, changed, err = st.ChangeEgress(ctx, args[0], args[1], change)
				return err
			})
			if err != nil {
				return err
			}
			if format == formatJSON {
				return writeJSON(o.stdout, egressUpdateJSON{egressJSON: newEgressJSON(updated), Changed: changed})
			}
			verb := "updated"
			if !changed {
				verb = "unchanged"
			}
			fmt.Fprintf(o.stdout, "egress %q %s: %s\n", updated.Key(), verb, egressSummary(updated))
			return nil
		},
	}
	c.Flags().StringSliceVar(&set, "destinations", nil, "replace every destination with these CIDRs, comma-separated or repeated")
	c.Flags().StringSliceVar(&add, "add-destination", nil, "add a destination CIDR (repeatable)")
	c.Flags().StringSliceVar(&remove, "remove-destination", nil, "remove a destination CIDR (repeatable)")
	addGatewayFlags(c, &replicas, &image)
	out = addOutputFlags(c)
	return c
}

func newEgressListCommand(o *rootOptions) *cobra.Command {
	var out *outputOptions
	c := &cobra.Command{
		Use:   "list",
		Short: "List egresses",
		Example: `  coilctl egress list
  coilctl egress list -o json`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := out.resolve()
			if err != nil {
				return err
			}
			var all []model.Egress
			err = o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				all, err = st.ListEgresses(ctx)
				return err
			})
			if err != nil {
				return err
			}
			if format == formatJSON {
				view := egressListJSON{Egresses: make([]egressJSON, 0, len(all))}
				for _, e := range all {
					view.Egresses = append(view.Egresses, newEgressJSON(e))
				}
				return writeJSON(o.stdout, view)
			}
			t := newTable(o.stdout, "NAMESPACE", "NAME", "VNI", "GATEWAYS", "DESTINATIONS")
			for _, e := range all {
				t.row(e.Namespace, e.Name, strconv.FormatUint(uint64(e.VNI), 10), gatewaysColumn(e), strings.Join(destinationStrings(e.Destinations), ","))
			}
			return t.flush()
		},
	}
	out = addOutputFlags(c)
	return c
}

func newEgressShowCommand(o *rootOptions) *cobra.Command {
	var out *outputOptions
	c := &cobra.Command{
		Use:   "show NAMESPACE NAME",
		Short: "Show an egress",
		Example: `  coilctl egress show internet nat
  coilctl egress show internet nat --json`,
		Args:              exactArgs("NAMESPACE", "NAME"),
		ValidArgsFunction: o.completeEgresses,
		RunE: func(cmd *cobra.Command, args []string) error {
			format, err := out.resolve()
			if err != nil {
				return err
			}
			var e model.Egress
			err = o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				e, err = st.GetEgress(ctx, args[0], args[1])
				return err
			})
			if err != nil {
				return err
			}
			if format == formatJSON {
				return writeJSON(o.stdout, newEgressJSON(e))
			}
			f := newFields(o.stdout)
			f.add("Namespace", "%s", e.Namespace)
			f.add("Name", "%s", e.Name)
			f.add("VNI", "%d", e.VNI)
			f.add("Destinations", "%s", strings.Join(destinationStrings(e.Destinations), ","))
			f.add("Created", "%s", e.CreatedAt.Format(time.RFC3339))
			f.add("Gateways", "pods of namespace %s labelled %s=%s", e.Namespace, model.EgressGatewayLabel, e.Name)
			if e.Managed() {
				image := e.Image
				if image == "" {
					image = "default (coil-controller's --egress-gateway-image)"
				}
				f.add("Managed", "%d replicas (Deployment and PodDisruptionBudget %s-gateway), image %s", e.Replicas, e.Name, image)
			} else {
				f.add("Managed", "no: run the gateway pods yourself")
			}
			f.add("Clients", "pods annotated %s%s=%s", model.EgressClientAnnotationPrefix, e.Namespace, e.Name)
			return f.flush()
		},
	}
	out = addOutputFlags(c)
	return c
}

func newEgressDeleteCommand(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAMESPACE NAME",
		Short: "Delete an egress",
		Long: `Delete the egress NAME of NAMESPACE. Every node removes its tunnels from
the clients and gateways; the clients' traffic to its destinations takes
the normal path again.`,
		Example:           `  coilctl egress delete internet nat`,
		Args:              exactArgs("NAMESPACE", "NAME"),
		ValidArgsFunction: o.completeEgresses,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				// Read first: an egress that does not exist is reported
				// without the schema write of initSchema.
				if _, err := st.GetEgress(ctx, args[0], args[1]); err != nil {
					return err
				}
				if err := initSchema(ctx, st); err != nil {
					return err
				}
				if err := st.DeleteEgress(ctx, args[0], args[1]); err != nil {
					return err
				}
				fmt.Fprintf(o.stdout, "egress \"%s/%s\" deleted\n", args[0], args[1])
				return nil
			})
		},
	}
}

// completeEgresses offers the namespaces of egresses for the first
// argument and the egresses of that namespace for the second.
func (o *rootOptions) completeEgresses(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 1 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	seen := map[string]bool{}
	_ = o.complete(cmd, func(ctx context.Context, st *model.Store) error {
		all, err := st.ListEgresses(ctx)
		for _, e := range all {
			v := e.Namespace
			if len(args) == 1 {
				if e.Namespace != args[0] {
					continue
				}
				v = e.Name
			}
			if !seen[v] {
				seen[v] = true
				out = append(out, v)
			}
		}
		return err
	})
	return out, cobra.ShellCompDirectiveNoFileComp
}
