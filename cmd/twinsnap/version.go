package main

import (
	"bytes"
	"context"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is the CLI's version, set at build time with
// -ldflags "-X main.version=v1.2.3"; otherwise it comes from the build
// information.
var version = ""

// versionInfo is what "twinsnap version -o json" prints.
type versionInfo struct {
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

// versionOptions are the flags of "version".
type versionOptions struct {
	output outputFormat
}

// newVersionCommand returns "twinsnap version".
func newVersionCommand(g *globalOptions) *cobra.Command {
	var opts versionOptions
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the CLI's version",
		Long:  "Print the CLI's version, the Go version it was built with and its platform. It calls no server.",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVersion(cmd.Context(), g, opts)
		},
	}
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runVersion prints the version.
func runVersion(_ context.Context, g *globalOptions, opts versionOptions) error {
	return printOutput(g.env.stdout, opts.output, currentVersion(), printVersionTable)
}

// currentVersion returns the CLI's version information.
func currentVersion() versionInfo {
	v := version
	if v == "" {
		v = "devel"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	return versionInfo{Version: v, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
}

// printVersionTable is the text printer of "version".
func printVersionTable(b *bytes.Buffer, v versionInfo) {
	b.WriteString("twinsnap " + v.Version + " (" + v.GoVersion + ", " + v.Platform + ")\n")
}
