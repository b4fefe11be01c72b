package cmd

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// Output formats of the read commands.
const (
	formatTable = "table"
	formatJSON  = "json"
)

// outputOptions are the -o/--output and --json flags of a read command.
type outputOptions struct {
	format string
	json   bool
	cmd    *cobra.Command
}

// addOutputFlags registers -o/--output and its alias --json on a read command.
func addOutputFlags(cmd *cobra.Command) *outputOptions {
	o := &outputOptions{cmd: cmd}
	cmd.Flags().StringVarP(&o.format, "output", "o", formatTable, "output format: table or json")
	cmd.Flags().BoolVar(&o.json, "json", false, "same as -o json")
	return o
}

// resolve returns the chosen format. It runs before etcd is contacted, so a
// typo in -o costs nothing.
func (o *outputOptions) resolve() (string, error) {
	if o.format != formatTable && o.format != formatJSON {
		return "", usagef("unknown output format %q (use table or json)", o.format)
	}
	if !o.json {
		return o.format, nil
	}
	if o.cmd.Flags().Changed("output") && o.format != formatJSON {
		return "", usagef("--json contradicts -o %s", o.format)
	}
	return formatJSON, nil
}

// writeJSON prints v as indented JSON followed by a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write JSON output: %w", err)
	}
	return nil
}

// table writes aligned columns separated by at least two spaces, like
// kubectl. Cells must not contain spaces, so that awk can split rows.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(headers...)
	return t
}

func (t *table) row(cells ...string) {
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

// fields writes "Label:  value" lines with aligned values, for the headers
// of the detail views (pool show, address info).
type fields struct {
	tw *tabwriter.Writer
}

func newFields(w io.Writer) *fields {
	return &fields{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
}

func (f *fields) add(label, format string, a ...any) {
	fmt.Fprintf(f.tw, "%s:\t%s\n", label, fmt.Sprintf(format, a...))
}

func (f *fields) flush() error {
	if err := f.tw.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}
