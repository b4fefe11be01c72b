package cmd

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/coil-project/coil/model"
	"github.com/spf13/cobra"
)

// addressHistoryJSON is the output of "address history".
type addressHistoryJSON struct {
	IP   string `json:"ip"`
	Pool string `json:"pool"`
	// Key is the etcd key of the address record.
	Key string `json:"key"`
	// Revision is etcd's revision when the history was read.
	Revision int64 `json:"revision"`
	// FromRevision is the oldest revision etcd still holds: 1 unless
	// etcd has compacted its history.
	FromRevision int64 `json:"fromRevision"`
	// Compacted is true when etcd dropped the revisions before
	// FromRevision, so older events of the address are lost.
	Compacted bool `json:"compacted"`
	// Since is the start of the --since window; absent without it.
	Since *time.Time `json:"since,omitempty"`
	// HeldAtStart is who held the address at FromRevision when the
	// history is compacted and the address was allocated then.
	HeldAtStart *historyHolderJSON `json:"heldAtStart"`
	Events      []historyEventJSON `json:"events"`
}

// historyHolderJSON is an allocation as the history shows it.
type historyHolderJSON struct {
	holderJSON
	Node string `json:"node"`
}

// releaserJSON names who deleted an address record.
type releaserJSON struct {
	// Component is coild, coil-controller or coilctl.
	Component string `json:"component"`
	// Host is the node of a coild, the pod of a coil-controller replica,
	// user@machine of coilctl.
	Host string `json:"host"`
}

// historyEventJSON is one change of the address record.
type historyEventJSON struct {
	Revision int64 `json:"revision"`
	// Time is null when unknown (a deletion that left no release note).
	Time *time.Time `json:"time"`
	// Event is allocated, released, reclaimed or updated.
	Event  string            `json:"event"`
	Holder historyHolderJSON `json:"holder"`
	// By is who deleted the record; null for allocations and unknown
	// deleters.
	By *releaserJSON `json:"by"`
	// Block is the block reclaimed with the address, when
	// coil-controller freed a deleted node's whole block.
	Block string `json:"block,omitempty"`
}

func newHistoryHolder(a model.Address) historyHolderJSON {
	return historyHolderJSON{
		holderJSON: holderJSON{
			IPv4: textOrEmpty(a.IPv4), IPv6: textOrEmpty(a.IPv6),
			Namespace: a.Namespace, Pod: a.Pod, PodUID: a.PodUID, ContainerID: a.ContainerID, Interface: a.Interface,
			CreatedAt: a.CreatedAt,
		},
		Node: a.Node,
	}
}

func newAddressHistoryJSON(h model.AddressHistory, since time.Time) addressHistoryJSON {
	v := addressHistoryJSON{
		IP: h.IP.String(), Pool: h.Pool, Key: h.Key, Revision: h.Revision,
		FromRevision: h.FromRevision, Compacted: h.Compacted,
		Events: []historyEventJSON{},
	}
	if !since.IsZero() {
		v.Since = &since
		h = h.Since(since)
	}
	if h.Initial != nil {
		holder := newHistoryHolder(*h.Initial)
		v.HeldAtStart = &holder
	}
	for _, e := range h.Events {
		ev := historyEventJSON{Revision: e.Revision, Event: e.Kind, Holder: newHistoryHolder(e.Address), Block: e.Block}
		if !e.At.IsZero() {
			at := e.At.UTC()
			ev.Time = &at
		}
		if e.By != nil {
			ev.By = &releaserJSON{Component: e.By.Component, Host: e.By.Host}
		}
		v.Events = append(v.Events, ev)
	}
	return v
}

// parseSince parses --since: a Go duration ("90m", "36h") or a number of
// days ("7d").
func parseSince(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err == nil && n > 0 {
			return time.Duration(n * float64(24*time.Hour)), nil
		}
	} else if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return d, nil
	}
	return 0, usagef("--since %q is not a positive duration (like 90m, 36h or 7d)", s)
}

func newAddressHistoryCommand(o *rootOptions) *cobra.Command {
	var out *outputOptions
	var sinceFlag string
	c := &cobra.Command{
		Use:   "history ADDRESS",
		Short: "Show who held an address and when, from etcd's revision history",
		Long: `Show every allocation and release of ADDRESS that etcd still remembers:
which pod (namespace, name, container, node) held it from when, and when
and by whom it was freed: released by the coild of its node (CNI DEL or
GC), or reclaimed by coil-controller (leaked address, or the block of a
deleted node) or by an operator with 'coilctl address free'.

The history comes from etcd's multi-version store, which keeps every
revision of a key until etcd compacts it. With etcd's default settings
nothing is compacted; clusters usually set --auto-compaction-retention
(for example 1h, or 1000 revisions in revision mode), and what was compacted
is lost: the output then says from which revision the history starts and
who held the address at that point. Keep more by raising that retention;
see docs/coilctl.md#address-history.

--since limits the output to the events of the last DURATION (like 90m,
36h or 7d). A deletion done by a Coil older than this feature, or by hand
with etcdctl, has no time and no releaser.`,
		Example: `  coilctl address history 10.64.0.7
  coilctl address history 10.64.0.7 --since 24h -o json`,
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
			var since time.Time
			if cmd.Flags().Changed("since") {
				d, err := parseSince(sinceFlag)
				if err != nil {
					return err
				}
				since = time.Now().Add(-d).UTC().Truncate(time.Second)
			}
			var view addressHistoryJSON
			err = o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				h, err := st.AddressHistory(ctx, ip)
				if err != nil {
					return err
				}
				view = newAddressHistoryJSON(h, since)
				return nil
			})
			if err != nil {
				return err
			}
			if format == formatJSON {
				return writeJSON(o.stdout, view)
			}
			return printAddressHistory(o, view)
		},
	}
	c.Flags().StringVar(&sinceFlag, "since", "", "show only the events of the last DURATION (90m, 36h, 7d)")
	out = addOutputFlags(c)
	return c
}

func printAddressHistory(o *rootOptions, v addressHistoryJSON) error {
	f := newFields(o.stdout)
	f.add("Address", "%s", v.IP)
	f.add("Pool", "%s", v.Pool)
	f.add("Key", "%s", v.Key)
	if v.Compacted {
		f.add("History", "revisions %d to %d; etcd compacted the revisions before %d, so earlier events are lost (to keep more, raise etcd's --auto-compaction-retention)",
			v.FromRevision, v.Revision, v.FromRevision)
	} else {
		f.add("History", "revisions %d to %d (complete: etcd has compacted none of it)", v.FromRevision, v.Revision)
	}
	if v.Since != nil {
		f.add("Since", "%s", v.Since.Format(time.RFC3339))
	}
	if h := v.HeldAtStart; h != nil {
		f.add(fmt.Sprintf("Held at %d", v.FromRevision), "%s/%s (container %s, node %s) since %s",
			h.Namespace, h.Pod, shortID(h.ContainerID), h.Node, h.CreatedAt.UTC().Format(time.RFC3339))
	}
	if err := f.flush(); err != nil {
		return err
	}
	fmt.Fprintln(o.stdout)
	if len(v.Events) == 0 {
		fmt.Fprintln(o.stdout, "No allocation or release of this address in that range.")
		return nil
	}
	t := newTable(o.stdout, "REVISION", "TIME", "EVENT", "POD", "CONTAINER", "NODE", "BY")
	for _, e := range v.Events {
		at, by := "-", "-"
		if e.Time != nil {
			at = e.Time.Format(time.RFC3339)
		}
		if e.By != nil {
			by = e.By.Component
			if e.By.Host != "" {
				by += ":" + e.By.Host
			}
		}
		event := e.Event
		if e.Block != "" {
			event += "(block)"
		}
		pod := "-"
		if e.Holder.Pod != "" {
			pod = e.Holder.Namespace + "/" + e.Holder.Pod
		}
		t.row(strconv.FormatInt(e.Revision, 10), at, event, pod, orDash(shortID(e.Holder.ContainerID)), orDash(e.Holder.Node), by)
	}
	return t.flush()
}

// shortID shortens a container ID the way the container runtimes print it.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
