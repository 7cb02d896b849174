package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// Environment variables the CLI reads.
const (
	envServer = "TWINSNAP_SERVER"
	envTLSDir = "TWINSNAP_TLS_DIR"
)

// The file names looked for in the TLS directory.
const (
	caFileName   = "ca.crt"
	certFileName = "admin.crt"
	keyFileName  = "admin.key"
)

// globalOptions holds the flags every command shares and what was
// resolved from them.
type globalOptions struct {
	env *cliEnv

	servers                   []string
	tlsDir                    string
	caFile, certFile, keyFile string
	timeout                   time.Duration
	timeoutSet                bool // --timeout was given
	resolvedServers           []string
	files                     tlsFiles
	ran                       bool // a command's own code was reached (after cobra's parsing)
}

// tlsFiles are the resolved paths of the client's TLS files.
type tlsFiles struct{ ca, cert, key string }

// run executes the CLI with args and returns the exit code.
func run(ctx context.Context, args []string, env *cliEnv) int {
	g := &globalOptions{env: env}
	root := newRootCommand(g)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	// Anything that fails before a command's own code runs is cobra
	// rejecting flags or arguments.
	if !g.ran && !errors.Is(err, errUsage) {
		err = &usageError{err: err}
	}
	printError(env.stderr, g, cmd, err)
	return exitCode(err)
}

// newRootCommand returns the command tree.
func newRootCommand(g *globalOptions) *cobra.Command {
	// Runnable like the groups, so that an unknown command is a usage
	// error with a one-line message.
	root := newGroupCommand("twinsnap", "Administer a twinsnap snapshot cluster")
	root.Long = `twinsnap administers a twinsnap cluster: two data nodes and a witness.

It calls any node's API over mutually authenticated TLS 1.3, using the
cluster CA certificate and an admin certificate (twinsnapd tls admin creates
one). Servers given with --server are tried in order; the next is tried when
one cannot be reached.`
	root.SilenceErrors = true
	root.SilenceUsage = true
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		g.ran = true
		g.timeoutSet = cmd.Flags().Changed("timeout")
		return nil
	}
	root.SetIn(g.env.stdin)
	root.SetOut(g.env.stdout)
	root.SetErr(g.env.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err: err} })
	root.SetUsageTemplate(root.UsageTemplate() + "\n" + exitCodesHelp)

	pf := root.PersistentFlags()
	pf.StringSliceVar(&g.servers, "server", nil,
		"API address host:port of a node; repeat or comma-separate to give several, tried in order (env "+envServer+")")
	pf.StringVar(&g.tlsDir, "tls-dir", "",
		"directory holding "+caFileName+", "+certFileName+" and "+keyFileName+" (env "+envTLSDir+", default $HOME/.config/twinsnap)")
	pf.StringVar(&g.caFile, "ca", "", "cluster CA certificate (default <tls-dir>/"+caFileName+")")
	pf.StringVar(&g.certFile, "cert", "", "admin certificate (default <tls-dir>/"+certFileName+")")
	pf.StringVar(&g.keyFile, "key", "", "admin private key (default <tls-dir>/"+keyFileName+")")
	pf.DurationVar(&g.timeout, "timeout", 30*time.Second,
		"bound on the whole command's calls to the API, waiting included (commands that wait default to more: see their help)")

	root.AddCommand(newNodeCommand(g), newClusterCommand(g), newSettingsCommand(g), newVMCommand(g),
		newSnapshotCommand(g), newVolumeContainerCommand(g), newShareCommand(g), newImportCommand(g),
		newJobCommand(g), newVersionCommand(g))
	return root
}

// newGroupCommand returns a command that only holds subcommands: alone it
// prints its help; with an unknown subcommand it is a usage error.
func newGroupCommand(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:                        use,
		Short:                      short,
		SuggestionsMinimumDistance: 2,
		DisableFlagsInUseLine:      true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf(" (did you mean %q?)", s[0])
			}
			return usagef("%s", msg)
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
}

// exactArgs is cobra.ExactArgs with named arguments in its message.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < len(names):
			return usagef("%s needs %s", cmd.CommandPath(), strings.Join(names[len(args):], " "))
		case len(args) > len(names):
			return usagef("%s takes %d argument(s), got %d: %s", cmd.CommandPath(), len(names), len(args), strings.Join(args, " "))
		}
		return nil
	}
}

// defaultTimeout makes d the bound on the command's calls when --timeout
// was not given: for commands that wait for the cluster to finish
// something, 30 seconds is too short a default.
func (g *globalOptions) defaultTimeout(d time.Duration) {
	if !g.timeoutSet {
		g.timeout = d
	}
}

// withTimeout bounds ctx by --timeout.
func (g *globalOptions) withTimeout(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if g.timeout <= 0 {
		return nil, nil, usagef("--timeout must be positive, got %s", g.timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	return ctx, cancel, nil
}

// connect bounds ctx by --timeout and opens the API client; done releases
// both.
func (g *globalOptions) connect(ctx context.Context) (context.Context, *api.Client, func(), error) {
	ctx, cancel, err := g.withTimeout(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := g.client()
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return ctx, c, func() { c.Close(); cancel() }, nil
}

// serverList resolves the servers from --server or TWINSNAP_SERVER.
func (g *globalOptions) serverList() ([]string, error) {
	raw := g.servers
	if len(raw) == 0 {
		raw = strings.Split(g.env.getenv(envServer), ",")
	}
	var out []string
	for _, s := range raw {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		host, port, err := net.SplitHostPort(s)
		if err != nil || host == "" || port == "" {
			return nil, usagef("server address %q is not host:port", s)
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, withHint(usagef("no server given"),
			"name a node's API address with --server HOST:PORT or set "+envServer)
	}
	return out, nil
}

// tlsFiles resolves the CA, certificate and key paths.
func (g *globalOptions) tlsFiles() (tlsFiles, error) {
	dir := g.tlsDir
	if dir == "" {
		dir = g.env.getenv(envTLSDir)
	}
	if dir == "" && (g.caFile == "" || g.certFile == "" || g.keyFile == "") {
		home := g.env.getenv("HOME")
		if home == "" {
			return tlsFiles{}, usagef("HOME is not set: give --tls-dir or set %s", envTLSDir)
		}
		dir = filepath.Join(home, ".config", "twinsnap")
	}
	pick := func(flag, name string) string {
		if flag != "" {
			return flag
		}
		return filepath.Join(dir, name)
	}
	return tlsFiles{
		ca:   pick(g.caFile, caFileName),
		cert: pick(g.certFile, certFileName),
		key:  pick(g.keyFile, keyFileName),
	}, nil
}

// client returns an API client for the resolved servers and TLS files.
func (g *globalOptions) client() (*api.Client, error) {
	servers, err := g.serverList()
	if err != nil {
		return nil, err
	}
	g.resolvedServers = servers
	files, err := g.tlsFiles()
	if err != nil {
		return nil, err
	}
	g.files = files
	var missing []string
	for _, f := range []string{files.ca, files.cert, files.key} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		where := "to " + filepath.Dir(files.ca)
		if filepath.Dir(files.cert) != filepath.Dir(files.ca) || filepath.Dir(files.key) != filepath.Dir(files.ca) {
			where = "where --ca, --cert and --key point"
		}
		return nil, withHint(fmt.Errorf("%w: cannot read %s", errTLSSetup, strings.Join(missing, ", ")),
			fmt.Sprintf("create an admin certificate where the cluster CA is kept with 'twinsnapd tls admin --ca-dir <CA dir> --name admin --out <dir>' and copy the CA certificate, admin certificate and key %s as %s, %s and %s (or choose them with --tls-dir, --ca, --cert, --key)",
				where, filepath.Base(files.ca), filepath.Base(files.cert), filepath.Base(files.key)))
	}
	c, err := api.NewClient(api.ClientConfig{
		Servers:  servers,
		CAFile:   files.ca,
		CertFile: files.cert,
		KeyFile:  files.key,
		Timeout:  g.timeout,
	})
	if err != nil {
		// Not %w: the client reports local file problems as ErrInvalid,
		// which would read as a server-side validation failure.
		msg := strings.TrimPrefix(err.Error(), api.ErrInvalid.Error()+": ")
		return nil, withHint(fmt.Errorf("%w: %s", errTLSSetup, msg),
			"check that the CA file holds the cluster CA certificate and that the certificate and key belong together (twinsnapd tls admin creates them)")
	}
	return c, nil
}

// writeOutcome turns a lost connection during a change into an unknown
// outcome: once the request may have been sent, failing to hear back does
// not mean it was not applied.
func writeOutcome(ctx context.Context, err error) error {
	if err != nil && errors.Is(err, api.ErrConnect) && ctx.Err() != nil {
		return fmt.Errorf("%w: no answer before the deadline (--timeout) or interruption: %w", api.ErrUnknownResult, err)
	}
	return err
}
