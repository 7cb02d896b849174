package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// MaxReply bounds the size of one API reply the client reads.
const MaxReply = 64 << 20

// ClientConfig configures a Client from files on disk, as the admin CLI
// uses it.
type ClientConfig struct {
	// Servers are API addresses (host:port) tried in order; the first that
	// answers serves the request.
	Servers []string
	// CAFile is the cluster CA certificate; CertFile and KeyFile are the
	// admin certificate and key.
	CAFile, CertFile, KeyFile string
	// Timeout bounds one request when its context has no deadline
	// (default 30 s).
	Timeout time.Duration
}

// Client calls the twinsnap API over mutually authenticated TLS 1.3.
type Client struct {
	servers []string
	http    *http.Client
	timeout time.Duration
}

// NewClient loads the certificates named in cfg and returns a client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if len(cfg.Servers) == 0 {
		return nil, fmt.Errorf("%w: no server address given", ErrInvalid)
	}
	caPEM, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: reading the cluster CA certificate: %w", ErrInvalid, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: %s holds no PEM certificate", ErrInvalid, cfg.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: loading the admin certificate: %w", ErrInvalid, err)
	}
	c := NewClientTLS(cfg.Servers, &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      pool,
		Certificates: []tls.Certificate{cert},
	})
	if cfg.Timeout > 0 {
		c.timeout = cfg.Timeout
	}
	return c, nil
}

// NewClientTLS returns a client using a prepared TLS configuration (nodes
// calling each other use their node certificates). The server's
// certificate is checked against the configuration's roots and the
// address it is reached at (node certificates carry their addresses).
func NewClientTLS(servers []string, conf *tls.Config) *Client {
	tr := &http.Transport{
		TLSClientConfig:     conf,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &Client{servers: servers, http: &http.Client{Transport: tr}, timeout: 30 * time.Second}
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// do sends a request to the first server that answers and decodes a 2xx
// reply into out. Servers that cannot be reached are skipped; an answer,
// even an error, ends the search.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("%w: encoding request: %w", ErrInvalid, err)
		}
	}
	var errs []error
	for _, server := range c.servers {
		err := c.doOne(ctx, server, method, path, body, out)
		if err == nil || !errors.Is(err, ErrConnect) || ctx.Err() != nil {
			return err
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *Client) doOne(ctx context.Context, server, method, path string, body []byte, out any) error {
	// path arrives escaped (ids go through url.PathEscape); keep that
	// form. A query string, if any, is already encoded.
	path, query, _ := strings.Cut(path, "?")
	unescaped, err := url.PathUnescape(Version + path)
	if err != nil {
		return fmt.Errorf("%w: path %q: %w", ErrInvalid, path, err)
	}
	u := url.URL{Scheme: "https", Host: server, Path: unescaped, RawPath: Version + path, RawQuery: query}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w %s: %w", ErrConnect, server, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxReply+1))
	if err != nil {
		return fmt.Errorf("%w %s: reading reply: %w", ErrConnect, server, err)
	}
	if len(raw) > MaxReply {
		return fmt.Errorf("%w: reply from %s exceeds %d bytes", ErrInternal, server, MaxReply)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		if json.Unmarshal(raw, &eb) != nil || eb.Error.Code == "" {
			eb.Error = ErrorDetail{Code: CodeInternal, Message: fmt.Sprintf("%s answered %s", server, resp.Status)}
		}
		return &Error{Status: resp.StatusCode, Detail: eb.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%w: decoding reply from %s: %w", ErrInternal, server, err)
	}
	return nil
}

// Nodes lists the cluster members.
func (c *Client) Nodes(ctx context.Context) (*NodeList, error) {
	var out NodeList
	return &out, c.do(ctx, http.MethodGet, "/nodes", nil, &out)
}

// ClusterStatus returns the cluster's leader, term, indexes and each
// peer's health.
func (c *Client) ClusterStatus(ctx context.Context) (*ClusterStatus, error) {
	var out ClusterStatus
	return &out, c.do(ctx, http.MethodGet, "/cluster/status", nil, &out)
}

// Health returns the answering node's own status.
func (c *Client) Health(ctx context.Context) (*NodeStatus, error) {
	var out NodeStatus
	return &out, c.do(ctx, http.MethodGet, "/health", nil, &out)
}

// Settings returns the cluster settings.
func (c *Client) Settings(ctx context.Context) (*Settings, error) {
	var out Settings
	return &out, c.do(ctx, http.MethodGet, "/settings", nil, &out)
}

// SetSnapshotsEnabled turns taking snapshots on or off, system-wide.
func (c *Client) SetSnapshotsEnabled(ctx context.Context, enabled bool) (*Settings, error) {
	var out Settings
	return &out, c.do(ctx, http.MethodPut, "/settings/snapshots", SnapshotsSetting{Enabled: enabled}, &out)
}

// Join asks the cluster to add the calling node as a voter.
func (c *Client) Join(ctx context.Context, req JoinRequest) error {
	return c.do(ctx, http.MethodPost, "/nodes", req, nil)
}

// RemoveNode removes a node from the cluster.
func (c *Client) RemoveNode(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/nodes/"+url.PathEscape(id), nil, nil)
}

// SetValues sets free-form settings; an empty value deletes a key.
func (c *Client) SetValues(ctx context.Context, values map[string]string) (*Settings, error) {
	var out Settings
	return &out, c.do(ctx, http.MethodPut, "/settings/values", SettingValues{Values: values}, &out)
}
