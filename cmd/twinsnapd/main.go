// Command twinsnapd is the twinsnap node daemon, run on each of the two
// data nodes and on the witness. Besides running the node it creates the
// cluster's certificates and recovers a node of a cluster that lost quorum.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/daemon"
)

func main() {
	root := rootCommand()
	if err := root.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "twinsnapd: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }

func rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "twinsnapd",
		Short: "The twinsnap node daemon",
		Long: `twinsnapd runs one node of a twinsnap cluster: a data node or the witness.

Exit codes: 0 success, 1 failure, 2 usage error.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(runCommand(), tlsCommand(), recoverCommand(), versionCommand())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	var mark func(c *cobra.Command)
	mark = func(c *cobra.Command) {
		if c.Args == nil || c.HasSubCommands() {
			c.Args = func(c *cobra.Command, args []string) error {
				if len(args) > 0 {
					return usageError{fmt.Errorf("unknown command %q for %q", args[0], c.CommandPath())}
				}
				return nil
			}
			if c.Run == nil && c.RunE == nil {
				c.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
			}
		} else {
			check := c.Args
			c.Args = func(c *cobra.Command, args []string) error {
				if err := check(c, args); err != nil {
					return usageError{err}
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			mark(sub)
		}
	}
	mark(root)
	return root
}

func runCommand() *cobra.Command {
	var config string
	cmd := &cobra.Command{
		Use:   "run --config FILE",
		Short: "Run the node until SIGINT or SIGTERM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd.Context(), config)
		},
	}
	cmd.Flags().StringVarP(&config, "config", "c", "/etc/twinsnap/twinsnapd.toml", "configuration file")
	return cmd
}

func runDaemon(ctx context.Context, config string) error {
	cfg, err := daemon.LoadConfig(config)
	if err != nil {
		return err
	}
	log, err := daemon.NewLogger(os.Stderr, cfg.Log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := daemon.Start(cfg, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down", "component", "daemon")
	return d.Close()
}

func tlsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Create the cluster CA and node and admin certificates",
		Long: `Create the cluster's certificates. Every channel of a twinsnap cluster (Raft, the API,
snapshot replication) is mutual TLS 1.3 with certificates of one cluster CA:

  twinsnapd tls ca    --dir /etc/twinsnap/ca
  twinsnapd tls node  --ca-dir /etc/twinsnap/ca --id data-a --host 10.0.0.1 --out /etc/twinsnap/tls
  twinsnapd tls admin --ca-dir /etc/twinsnap/ca --name alice --out ~/.config/twinsnap

tls ca also creates cluster.key, the cluster key (32 random bytes, mode 0600), which
seals the passwords of export shares in the replicated state; tls node copies it into
the node's directory, next to its certificate (admin directories never get it). For a
CA directory made before cluster keys, the first tls node creates it, so run tls node
again for each node of such a cluster. Keep the CA directory (ca.key, cluster.key) offline
after issuing the certificates. The cluster key cannot be rotated yet.`,
	}
	var dir, name string
	var validity time.Duration
	ca := &cobra.Command{
		Use:   "ca --dir DIR",
		Short: "Create a new cluster CA and cluster key (ca.crt, ca.key, cluster.key) in DIR",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usageError{errors.New("--dir is required")}
			}
			c, err := daemon.InitCA(dir, name, validity)
			if err != nil {
				return err
			}
			fmt.Printf("created cluster CA %q in %s (valid until %s) and cluster key %s\n", c.Cert.Subject.CommonName, dir, c.Cert.NotAfter.UTC().Format(time.RFC3339), c.ClusterKey.ID())
			return nil
		},
	}
	ca.Flags().StringVar(&dir, "dir", "", "directory for ca.crt, ca.key and cluster.key")
	ca.Flags().StringVar(&name, "name", "twinsnap cluster CA", "the CA's common name")
	ca.Flags().DurationVar(&validity, "validity", daemon.DefaultCAValidity, "how long the CA is valid")

	var caDir, out, id string
	var hosts []string
	var certValidity time.Duration
	node := &cobra.Command{
		Use:   "node --ca-dir DIR --id ID --host HOST[,HOST] --out DIR",
		Short: "Issue a node certificate (ca.crt, ID.crt, ID.key and a copy of cluster.key in --out)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if caDir == "" || id == "" || out == "" {
				return usageError{errors.New("--ca-dir, --id and --out are required")}
			}
			b, err := daemon.IssueNode(caDir, out, id, hosts, certValidity)
			if err != nil {
				return err
			}
			fmt.Printf("issued node certificate %q for %s in %s (valid until %s)\n", id, strings.Join(hosts, ","), out, b.Cert.NotAfter.UTC().Format(time.RFC3339))
			if b.ClusterKey != nil {
				fmt.Printf("copied cluster key %s into %s\n", b.ClusterKey.ID(), out)
			}
			return nil
		},
	}
	node.Flags().StringVar(&caDir, "ca-dir", "", "directory holding ca.crt, ca.key and cluster.key")
	node.Flags().StringVar(&id, "id", "", "node id (as in the node's configuration)")
	node.Flags().StringSliceVar(&hosts, "host", nil, "host names and IP addresses the node is reached at")
	node.Flags().StringVar(&out, "out", "", "directory to write the bundle to")
	node.Flags().DurationVar(&certValidity, "validity", daemon.DefaultCertValidity, "how long the certificate is valid")

	var adminCADir, adminOut, adminName string
	var adminValidity time.Duration
	admin := &cobra.Command{
		Use:   "admin --ca-dir DIR --name NAME --out DIR",
		Short: "Issue an admin certificate for the twinsnap CLI (ca.crt, NAME.crt, NAME.key in --out)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if adminCADir == "" || adminName == "" || adminOut == "" {
				return usageError{errors.New("--ca-dir, --name and --out are required")}
			}
			b, err := daemon.IssueAdmin(adminCADir, adminOut, adminName, adminValidity)
			if err != nil {
				return err
			}
			fmt.Printf("issued admin certificate %q in %s (valid until %s)\n", adminName, adminOut, b.Cert.NotAfter.UTC().Format(time.RFC3339))
			return nil
		},
	}
	admin.Flags().StringVar(&adminCADir, "ca-dir", "", "directory holding ca.crt and ca.key")
	admin.Flags().StringVar(&adminName, "name", "admin", "the admin's name")
	admin.Flags().StringVar(&adminOut, "out", "", "directory to write the bundle to")
	admin.Flags().DurationVar(&adminValidity, "validity", daemon.DefaultCertValidity, "how long the certificate is valid")

	cmd.AddCommand(ca, node, admin)
	return cmd
}

func recoverCommand() *cobra.Command {
	var config, peers string
	cmd := &cobra.Command{
		Use:   "recover --config FILE --peers FILE",
		Short: "Rewrite a stopped node's Raft membership after the cluster lost quorum",
		Long: `recover rewrites the Raft configuration of a STOPPED node so that it restarts as a
member of the voters listed in the peers file, a JSON array such as

  [{"id": "data-a", "address": "10.0.0.1:7001"}, {"id": "witness", "address": "10.0.0.3:7001"}]

Run it with the same peers file on every surviving node, then start them. Committed
state is kept; entries that never reached a majority may be lost. See docs/operations.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if peers == "" {
				return usageError{errors.New("--peers is required")}
			}
			cfg, err := daemon.LoadConfig(config)
			if err != nil {
				return err
			}
			log, err := daemon.NewLogger(os.Stderr, cfg.Log)
			if err != nil {
				return err
			}
			servers, err := daemon.Recover(cfg, peers, log)
			if err != nil {
				return err
			}
			fmt.Printf("node %s will restart as a member of %d voters; start twinsnapd on each of them\n", cfg.ID, len(servers))
			return nil
		},
	}
	cmd.Flags().StringVarP(&config, "config", "c", "/etc/twinsnap/twinsnapd.toml", "configuration file")
	cmd.Flags().StringVar(&peers, "peers", "", "JSON file listing the surviving voters")
	return cmd
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Println("twinsnapd", daemon.Version)
		},
	}
}
