package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Share is a registered SMB share (or local directory) packages are
// exported to and imported from. Its password is never shown.
type Share struct {
	Name string `json:"name"`
	// URL is smb://host[:port]/share[/dir] or file:///dir.
	URL    string `json:"url"`
	User   string `json:"user,omitempty"`
	Domain string `json:"domain,omitempty"`
	// HasPassword says a password is stored (encrypted with the cluster
	// key).
	HasPassword bool      `json:"has_password"`
	CreatedAt   time.Time `json:"created_at"`
}

// ShareList is the reply of GET /v1/shares.
type ShareList struct {
	Shares []Share `json:"shares"`
}

// ShareAddRequest is the body of POST /v1/shares. The password travels
// once, over the API's mutual TLS, and is sealed with the cluster key
// before it is replicated.
type ShareAddRequest struct {
	Name     string `json:"name"`
	URL      string `json:"url"`
	User     string `json:"user,omitempty"`
	Domain   string `json:"domain,omitempty"`
	Password string `json:"password,omitempty"`
	// Check connects to the share (and writes and removes a probe file)
	// before it is stored; default true.
	Check *bool `json:"check,omitempty"`
}

// ExportRequest is the body of POST /v1/snapshots/{id}/export.
type ExportRequest struct {
	// Share names the share; Dir is the directory within it.
	Share string `json:"share"`
	Dir   string `json:"dir,omitempty"`
	// Package is the package's base name; default <vm>-<snapshot name>-<time>.
	Package string `json:"package,omitempty"`
	// Format is qcow2 (default) or vmdk; OVA writes one .ova file.
	Format string `json:"format,omitempty"`
	OVA    bool   `json:"ova,omitempty"`
	// Volumes limits the export to these volumes (names); default all of
	// the snapshot's.
	Volumes []string `json:"volumes,omitempty"`
	// Window is a maintenance window such as "22:00-04:00"; Days limits
	// it ("mon-fri"); Location is its time zone (default UTC).
	Window   string `json:"window,omitempty"`
	Days     string `json:"days,omitempty"`
	Location string `json:"location,omitempty"`
	// BandwidthBytes limits the transfer rate, in bytes per second.
	BandwidthBytes int64 `json:"bandwidth_bytes,omitempty"`
	// Node runs the export; default a node with a verified replica.
	Node string `json:"node,omitempty"`
}

// ImportRequest is the body of POST /v1/imports.
type ImportRequest struct {
	// Share names the share; Path is the package's .ovf or .ova within it.
	Share string `json:"share"`
	Path  string `json:"path"`
	// Name is the new VM's name.
	Name string `json:"name"`
	// Node is the data node that will host the VM; default the node
	// that receives the request, if it is a data node.
	Node string `json:"node,omitempty"`
	// KeepMACs keeps the package's MAC addresses (default: new ones).
	KeepMACs bool `json:"keep_macs,omitempty"`
	// Readdress runs a program in the guest through the guest agent
	// after the first boot, with these arguments (for new IP settings).
	Readdress     string   `json:"readdress,omitempty"`
	ReaddressArgs []string `json:"readdress_args,omitempty"`
	// Window, Days, Location and BandwidthBytes as for exports.
	Window         string `json:"window,omitempty"`
	Days           string `json:"days,omitempty"`
	Location       string `json:"location,omitempty"`
	BandwidthBytes int64  `json:"bandwidth_bytes,omitempty"`
}

// Job is an export or import job.
type Job struct {
	ID   string `json:"id"`
	Kind string `json:"kind"`
	// State is queued, running, paused, done, failed or cancelled.
	State string `json:"state"`
	// Reason says why a job is paused.
	Reason string `json:"reason,omitempty"`
	Node   string `json:"node"`
	// SnapshotID, Share, Dir, Package, Format and OVA describe an export;
	// Share, Path and VMName an import.
	SnapshotID string `json:"snapshot_id,omitempty"`
	Share      string `json:"share,omitempty"`
	Dir        string `json:"dir,omitempty"`
	Package    string `json:"package,omitempty"`
	Format     string `json:"format,omitempty"`
	OVA        bool   `json:"ova,omitempty"`
	Path       string `json:"path,omitempty"`
	VMName     string `json:"vm_name,omitempty"`
	// VMID is the VM an import created.
	VMID string `json:"vm_id,omitempty"`
	// Window is the maintenance window ("" : none); BandwidthBytes the
	// rate limit.
	Window         string `json:"window,omitempty"`
	BandwidthBytes int64  `json:"bandwidth_bytes,omitempty"`
	// Progress: bytes moved, the resume offset, the total (0: unknown),
	// the last rate in bytes/s and the file at hand.
	Bytes      int64  `json:"bytes"`
	Offset     int64  `json:"offset"`
	TotalBytes int64  `json:"total_bytes,omitempty"`
	Rate       int64  `json:"rate"`
	File       string `json:"file,omitempty"`
	// Error says why a job failed.
	Error     string    `json:"error,omitempty"`
	Creator   string    `json:"creator"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// JobList is the reply of GET /v1/jobs.
type JobList struct {
	Jobs []Job `json:"jobs"`
}

// Shares lists the shares.
func (c *Client) Shares(ctx context.Context) (*ShareList, error) {
	var out ShareList
	return &out, c.do(ctx, http.MethodGet, "/shares", nil, &out)
}

// AddShare registers a share.
func (c *Client) AddShare(ctx context.Context, req ShareAddRequest) (*Share, error) {
	var out Share
	return &out, c.do(ctx, http.MethodPost, "/shares", req, &out)
}

// RemoveShare forgets a share (refused while a job uses it).
func (c *Client) RemoveShare(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/shares/"+url.PathEscape(name), nil, nil)
}

// ExportSnapshot starts an export job for a complete snapshot.
func (c *Client) ExportSnapshot(ctx context.Context, snapshot string, req ExportRequest) (*Job, error) {
	var out Job
	return &out, c.do(ctx, http.MethodPost, "/snapshots/"+url.PathEscape(snapshot)+"/export", req, &out)
}

// Import starts an import job.
func (c *Client) Import(ctx context.Context, req ImportRequest) (*Job, error) {
	var out Job
	return &out, c.do(ctx, http.MethodPost, "/imports", req, &out)
}

// Jobs lists jobs; kind and state filter (empty: all).
func (c *Client) Jobs(ctx context.Context, kind, state string) (*JobList, error) {
	q := url.Values{}
	if kind != "" {
		q.Set("kind", kind)
	}
	if state != "" {
		q.Set("state", state)
	}
	path := "/jobs"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out JobList
	return &out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// Job returns one job.
func (c *Client) Job(ctx context.Context, id string) (*Job, error) {
	var out Job
	return &out, c.do(ctx, http.MethodGet, "/jobs/"+url.PathEscape(id), nil, &out)
}

// CancelJob cancels a job that has not ended.
func (c *Client) CancelJob(ctx context.Context, id string) (*Job, error) {
	var out Job
	return &out, c.do(ctx, http.MethodPost, "/jobs/"+url.PathEscape(id)+"/cancel", nil, &out)
}
