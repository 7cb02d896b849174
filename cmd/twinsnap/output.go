package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// outputFormat is the value of --output: table (for people) or json (for
// scripts: the API types, indented).
type outputFormat string

// The output formats.
const (
	formatTable outputFormat = "table"
	formatJSON  outputFormat = "json"
)

// String implements pflag.Value.
func (f *outputFormat) String() string { return string(*f) }

// Set implements pflag.Value.
func (f *outputFormat) Set(s string) error {
	switch outputFormat(s) {
	case formatTable, formatJSON:
		*f = outputFormat(s)
		return nil
	}
	return fmt.Errorf("output format %q is not table or json", s)
}

// Type implements pflag.Value.
func (f *outputFormat) Type() string { return "table|json" }

// addOutputFlag adds --output/-o to cmd, defaulting to table.
func addOutputFlag(cmd *cobra.Command, f *outputFormat) {
	*f = formatTable
	cmd.Flags().VarP(f, "output", "o", "output format: table or json (json prints the API's own types)")
	_ = cmd.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{string(formatTable), string(formatJSON)}, cobra.ShellCompDirectiveNoFileComp
	})
}

// printOutput writes v in format f: as indented JSON, or as the text that
// table renders into a buffer.
func printOutput[T any](w io.Writer, f outputFormat, v T, table func(*bytes.Buffer, T)) error {
	if f == formatJSON {
		return writeJSON(w, v)
	}
	var buf bytes.Buffer
	table(&buf, v)
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	return nil
}

// writeJSON writes v to w as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("writing JSON output: %w", err)
	}
	return nil
}

// table renders aligned columns into a buffer (writes to memory do not
// fail, so they are not checked).
type table struct{ tw *tabwriter.Writer }

// newTable returns a table writing into buf.
func newTable(buf *bytes.Buffer) *table {
	return &table{tw: tabwriter.NewWriter(buf, 0, 8, 2, ' ', 0)}
}

// row adds one row of cells.
func (t *table) row(cells ...string) {
	_, _ = io.WriteString(t.tw, strings.Join(cells, "\t")+"\n")
}

// flush aligns and writes the rows added so far.
func (t *table) flush() { _ = t.tw.Flush() }

// yesNo shows a boolean in a table.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// orDash shows an empty string in a table as "-".
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
