package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// hintShareList is the hint for a share that does not exist.
const hintShareList = "list the shares with 'twinsnap share list'"

// maxPasswordLine bounds the first line read from --password-file.
const maxPasswordLine = 1024

// newShareCommand returns "twinsnap share" and its subcommands.
func newShareCommand(g *globalOptions) *cobra.Command {
	cmd := newGroupCommand("share", "Register, list and remove the SMB shares packages are exported to and imported from")
	cmd.AddCommand(newShareAddCommand(g), newShareListCommand(g), newShareRemoveCommand(g))
	return cmd
}

// shareAddOptions are the flags and argument of "share add".
type shareAddOptions struct {
	name         string
	url          string
	user         string
	domain       string
	passwordFile string
	noCheck      bool
	output       outputFormat
}

// newShareAddCommand returns "twinsnap share add NAME".
func newShareAddCommand(g *globalOptions) *cobra.Command {
	var opts shareAddOptions
	cmd := &cobra.Command{
		Use:   "add NAME --url URL [--user USER]",
		Short: "Register a share for exports and imports",
		Long: `Register a share under NAME: an SMB share, smb://host[:port]/share[/dir]
(--user required, --domain optional), or a directory local to every data
node, file:///dir (no user, domain or password).

The password of an SMB share is never taken from the command line or the
environment. With --password-file FILE it is the file's first line,
without its line ending ("-" reads that line from stdin); a file other
users can read (mode o+r) is refused. Without --password-file it is asked
for on the terminal, without echo (twice with --no-check, as nothing then
tries it); when stdin is not a terminal the command refuses to run. The
password travels once, over the API's mutual TLS; the cluster stores it
sealed with the cluster key and never shows it back (share list says only
whether one is stored).

Unless --no-check is given, the node connects to the share and writes and
removes a probe file before it stores the share; a share it cannot use is
refused (the server's message says why). A name taken exits 6.`,
		Example: `  twinsnap share add backup --url smb://nas1.example.com/backup/twinsnap --user svc-twinsnap --domain CORP
  twinsnap share add backup --url smb://nas1:4450/backup --user svc-twinsnap --password-file /etc/twinsnap/nas1.pass
  pass show nas1 | twinsnap share add backup --url smb://nas1/backup --user svc-twinsnap --password-file -
  twinsnap share add scratch --url file:///srv/exports`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.name = args[0]
			return runShareAdd(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.url, "url", "", "smb://host[:port]/share[/dir] or file:///dir (required; no user or password in it)")
	f.StringVar(&opts.user, "user", "", "SMB user name (required for smb://)")
	f.StringVar(&opts.domain, "domain", "", "SMB domain or workgroup of --user")
	f.StringVar(&opts.passwordFile, "password-file", "",
		"read the SMB password from the first line of this file (not readable by other users), or from stdin with -; without it the password is asked for on the terminal")
	f.BoolVar(&opts.noCheck, "no-check", false, "store the share without connecting to it first")
	addOutputFlag(cmd, &opts.output)
	// There is no --password flag: say why when one is given.
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		if strings.Contains(err.Error(), "--password") && !strings.Contains(err.Error(), "--password-file") {
			return withHint(&usageError{err: err},
				"passwords are never taken on the command line: leave it out to be asked without echo, or use --password-file FILE (change the password if you typed it in a shell: the history keeps it)")
		}
		return &usageError{err: err}
	})
	return cmd
}

// request checks the flags and returns the share they describe, without
// its password.
func (o shareAddOptions) request() (api.ShareAddRequest, error) {
	var req api.ShareAddRequest
	switch {
	case o.name == "":
		return req, usagef("the share name is empty")
	case o.url == "":
		return req, usagef("--url is required: smb://host[:port]/share[/dir] or file:///dir")
	}
	scheme, err := checkShareURL(o.url)
	if err != nil {
		return req, err
	}
	switch {
	case scheme == "file" && (o.user != "" || o.domain != "" || o.passwordFile != ""):
		return req, usagef("a file:// share takes no --user, --domain or --password-file: the data nodes reach the directory themselves")
	case scheme == "smb" && o.user == "":
		return req, usagef("--user is required for an smb:// share")
	case strings.Contains(o.user, ":"):
		// Not echoed: it may hold a password ("user:password").
		return req, usagef("--user holds ':': give the user name alone; the password is asked for, or read with --password-file")
	}
	req = api.ShareAddRequest{Name: o.name, URL: o.url, User: o.user, Domain: o.domain}
	if o.noCheck {
		req.Check = new(bool)
	}
	return req, nil
}

// checkShareURL checks the form of a share URL and returns its scheme.
// The server checks it fully. A URL with user information is refused
// without quoting it: it may hold a password.
func checkShareURL(raw string) (string, error) {
	if strings.Contains(raw, "@") {
		return "", usagef("--url holds user information (something@): give the user with --user; the password is asked for, or read with --password-file, never put in the URL")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", usagef("--url: %w", err)
	}
	switch u.Scheme {
	case "smb":
		if u.Host == "" || strings.Trim(u.Path, "/") == "" {
			return "", usagef("--url %q names no host or share: smb://host[:port]/share[/dir]", raw)
		}
	case "file":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return "", usagef("--url %q: a local directory is file:///dir (three slashes, an absolute path)", raw)
		}
	default:
		return "", usagef("--url %q is not smb://host[:port]/share[/dir] or file:///dir", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", usagef("--url %q holds a query or a fragment", raw)
	}
	return u.Scheme, nil
}

// runShareAdd reads the password, registers the share and prints it.
func runShareAdd(ctx context.Context, g *globalOptions, opts shareAddOptions) error {
	req, err := opts.request()
	if err != nil {
		return err
	}
	if req.User != "" {
		// Before connect: the time at the prompt is not the API's.
		if req.Password, err = sharePassword(ctx, g, opts); err != nil {
			return err
		}
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	sh, err := c.AddShare(ctx, req)
	if err = writeOutcome(ctx, err); err != nil {
		err = fmt.Errorf("adding share %s: %w", opts.name, err)
		switch {
		case errors.Is(err, api.ErrUnknownResult):
			return withHint(err, "see whether the share was added with 'twinsnap share list' before retrying")
		case errors.Is(err, api.ErrConflict):
			return withHint(err, "the name may be taken: "+hintShareList)
		case errors.Is(err, api.ErrInvalid) && !opts.noCheck:
			return withHint(err, "the node could not use the share as given: check the URL, user, domain and password (--no-check stores it without trying)")
		}
		return err
	}
	return printOutput(g.env.stdout, opts.output, sh, g.printShareTable)
}

// sharePassword returns the password of an SMB share: from
// --password-file when given, else from a prompt without echo on the
// terminal. It is never printed.
func sharePassword(ctx context.Context, g *globalOptions, opts shareAddOptions) (string, error) {
	if opts.passwordFile != "" {
		return readPasswordFile(g.env, opts.passwordFile)
	}
	if !g.env.stdinIsTerminal() || g.env.readPassword == nil {
		return "", withHint(usagef("stdin is not a terminal, so the password cannot be asked for"),
			"give it with --password-file FILE (its first line), or pipe it in with --password-file -")
	}
	who := opts.user
	if opts.domain != "" {
		who = opts.domain + `\` + opts.user
	}
	pw, err := promptPassword(ctx, g.env, fmt.Sprintf("Password for %s on %s: ", who, opts.url))
	if err != nil {
		return "", err
	}
	if opts.noCheck {
		again, err := promptPassword(ctx, g.env, "Again, to confirm (--no-check: nothing tries it): ")
		if err != nil {
			return "", err
		}
		if again != pw {
			return "", withHint(usagef("the passwords do not match"), "nothing was stored")
		}
	}
	return pw, nil
}

// promptPassword asks for a password on stderr and reads it without echo.
func promptPassword(ctx context.Context, env *cliEnv, prompt string) (string, error) {
	if _, err := io.WriteString(env.stderr, prompt); err != nil {
		return "", fmt.Errorf("asking for the password: %w", err)
	}
	line, err := env.readPassword(ctx)
	// The typed line break was not echoed either.
	_, _ = io.WriteString(env.stderr, "\n")
	switch {
	case ctx.Err() != nil:
		return "", withHint(usagef("interrupted: aborted"), "nothing was stored")
	case errors.Is(err, io.EOF):
		return "", withHint(usagef("no password given: aborted"), "nothing was stored")
	case err != nil:
		return "", fmt.Errorf("reading the password: %w", err)
	case len(line) == 0:
		return "", withHint(usagef("the password is empty"), "nothing was stored")
	}
	return string(line), nil
}

// readPasswordFile returns the first line of name ("-": stdin) without
// its line ending. A regular file that other users may read is refused.
func readPasswordFile(env *cliEnv, name string) (string, error) {
	var r io.Reader
	if name == "-" {
		if env.stdinIsTerminal() {
			return "", withHint(usagef("--password-file - reads stdin, which is a terminal: what you type would be shown"),
				"leave --password-file out to be asked without echo, or pipe the password in")
		}
		r = env.stdin
	} else {
		f, err := os.Open(name)
		if err != nil {
			return "", usagef("--password-file: %w", err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return "", usagef("--password-file: %w", err)
		}
		switch mode := st.Mode(); {
		case mode.IsDir():
			return "", usagef("--password-file %s is a directory", name)
		case mode.IsRegular() && mode.Perm()&0o004 != 0:
			return "", withHint(usagef("--password-file %s can be read by every user (mode %04o): refusing a password others can read", name, mode.Perm()),
				fmt.Sprintf("restrict it with 'chmod o-r %s' (0600 or 0640), and change the password if others may have read it", name))
		}
		r = f
	}
	line, err := bufio.NewReaderSize(io.LimitReader(r, maxPasswordLine+2), maxPasswordLine+2).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", usagef("--password-file %s: %w", name, err)
	}
	// A line cut by the limit comes out longer than the limit.
	line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	switch {
	case len(line) > maxPasswordLine:
		return "", usagef("--password-file %s: the first line is longer than %d bytes", name, maxPasswordLine)
	case line == "":
		return "", usagef("--password-file %s: the first line is empty", name)
	}
	return line, nil
}

// printShareTable is the table printer of "share add".
func (g *globalOptions) printShareTable(b *bytes.Buffer, s *api.Share) {
	t := newTable(b)
	t.row("Name:", s.Name)
	t.row("URL:", s.URL)
	t.row("User:", orDash(s.User))
	t.row("Domain:", orDash(s.Domain))
	t.row("Password:", passwordStored(s.HasPassword))
	t.row("Created:", g.formatTime(s.CreatedAt))
	t.flush()
}

// passwordStored says whether a password is stored, never what it is.
func passwordStored(has bool) string {
	if has {
		return "stored"
	}
	return "none"
}

// shareListOptions are the flags of "share list".
type shareListOptions struct {
	output outputFormat
}

// newShareListCommand returns "twinsnap share list".
func newShareListCommand(g *globalOptions) *cobra.Command {
	var opts shareListOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the shares",
		Long: `List the registered shares: name, URL, user (DOMAIN\user when a domain is
set), whether a password is stored (never the password), and when the share
was added.`,
		Example: "  twinsnap share list\n  twinsnap share list -o json",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runShareList(cmd.Context(), g, opts)
		},
	}
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runShareList prints the shares.
func runShareList(ctx context.Context, g *globalOptions, opts shareListOptions) error {
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	l, err := c.Shares(ctx)
	if err != nil {
		return fmt.Errorf("listing shares: %w", err)
	}
	if l.Shares == nil {
		l.Shares = []api.Share{}
	}
	return printOutput(g.env.stdout, opts.output, l, g.printShareListTable)
}

// printShareListTable is the table printer of "share list".
func (g *globalOptions) printShareListTable(b *bytes.Buffer, l *api.ShareList) {
	t := newTable(b)
	t.row("NAME", "URL", "USER", "PASSWORD", "CREATED")
	for _, s := range l.Shares {
		user := s.User
		if s.Domain != "" {
			user = s.Domain + `\` + user
		}
		t.row(s.Name, s.URL, orDash(user), yesNo(s.HasPassword), g.formatTime(s.CreatedAt))
	}
	t.flush()
}

// shareRemoveOptions are the flags and argument of "share remove".
type shareRemoveOptions struct {
	name string
	yes  bool
}

// newShareRemoveCommand returns "twinsnap share remove NAME".
func newShareRemoveCommand(g *globalOptions) *cobra.Command {
	var opts shareRemoveOptions
	cmd := &cobra.Command{
		Use:   "remove NAME",
		Short: "Forget a share",
		Long: `Forget a share and its stored password. Packages on the share are not
touched. A share that a job still uses is refused (exit 6); an unknown
share exits 5.

On a terminal it asks for confirmation unless --yes is given; when stdin is
not a terminal it refuses to run without --yes.`,
		Example: "  twinsnap share remove backup\n  twinsnap share remove backup --yes",
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.name = args[0]
			return runShareRemove(cmd.Context(), g, opts)
		},
	}
	cmd.Flags().BoolVarP(&opts.yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

// runShareRemove forgets a share after confirmation.
func runShareRemove(ctx context.Context, g *globalOptions, opts shareRemoveOptions) error {
	if opts.name == "" {
		return usagef("the share name is empty")
	}
	if !opts.yes {
		question := fmt.Sprintf("Remove share %s (packages on it are not touched)?", opts.name)
		if err := confirm(ctx, g.env, question); err != nil {
			return err
		}
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	if err := writeOutcome(ctx, c.RemoveShare(ctx, opts.name)); err != nil {
		err = fmt.Errorf("removing share %s: %w", opts.name, err)
		switch {
		case errors.Is(err, api.ErrUnknownResult):
			return withHint(err, "see whether it is gone with 'twinsnap share list' before retrying")
		case errors.Is(err, api.ErrConflict):
			return withHint(err, "a job may still use it: see 'twinsnap job list'")
		case errors.Is(err, api.ErrNotFound):
			return withHint(err, hintShareList)
		}
		return err
	}
	if _, err := fmt.Fprintf(g.env.stdout, "Removed share %s.\n", opts.name); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	return nil
}
