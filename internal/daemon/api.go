package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/twinsnap/twinsnap/cluster"
	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/pki"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/internal/api"
)

// maxBody bounds a request body.
const maxBody = 1 << 20

// writeTimeout bounds a write proposed through the API.
const writeTimeout = 30 * time.Second

// route is one API endpoint: who may call it and what serves it.
type route struct {
	pattern string
	roles   []pki.Role
	handle  func(w http.ResponseWriter, r *http.Request) error
}

func (d *Daemon) routes() http.Handler {
	admin := []pki.Role{pki.RoleAdmin}
	adminOrNode := []pki.Role{pki.RoleAdmin, pki.RoleNode}
	mux := http.NewServeMux()
	for _, rt := range []route{
		{"GET /v1/health", adminOrNode, d.getHealth},
		{"GET /v1/nodes", admin, d.getNodes},
		{"POST /v1/nodes", []pki.Role{pki.RoleNode}, d.postNode},
		{"DELETE /v1/nodes/{id}", admin, d.deleteNode},
		{"GET /v1/cluster/status", admin, d.getClusterStatus},
		{"GET /v1/settings", admin, d.getSettings},
		{"PUT /v1/settings/snapshots", admin, d.putSnapshotsSetting},
		{"PUT /v1/settings/values", admin, d.putSettingValues},
		{"GET /v1/vms", admin, d.getVMs},
		{"GET /v1/vms/{id}", admin, d.getVM},
		{"POST /v1/vms", adminOrNode, d.postVM},
		{"DELETE /v1/vms/{id}", admin, d.deleteVM},
		{"POST /v1/vms/{id}/quiesce-check", adminOrNode, d.postQuiesceCheck},
		{"GET /v1/snapshots", admin, d.getSnapshots},
		{"POST /v1/snapshots", adminOrNode, d.postSnapshot},
		{"GET /v1/snapshots/{id}", admin, d.getSnapshot},
		{"DELETE /v1/snapshots/{id}", admin, d.deleteSnapshot},
		{"GET /v1/snapshots/{id}/progress", adminOrNode, d.getSnapshotProgress},
		{"GET /v1/snapshots/{id}/config", admin, d.getSnapshotConfig},
		{"POST /v1/snapshots/{id}/create-vm", adminOrNode, d.postCreateVM},
		{"GET /v1/volume-containers", admin, d.getContainers},
		{"GET /v1/shares", admin, d.getShares},
		{"POST /v1/shares", admin, d.postShare},
		{"DELETE /v1/shares/{name}", admin, d.deleteShare},
		{"POST /v1/snapshots/{id}/export", admin, d.postExport},
		{"POST /v1/imports", admin, d.postImport},
		{"GET /v1/jobs", admin, d.getJobs},
		{"GET /v1/jobs/{id}", admin, d.getJob},
		{"POST /v1/jobs/{id}/cancel", admin, d.postJobCancel},
		{"POST /v1/volume-containers/{volume}/expand", admin, d.postContainerExpand},
	} {
		mux.Handle(rt.pattern, d.guard(rt))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &api.Error{Status: http.StatusNotFound, Detail: api.ErrorDetail{Code: api.CodeNotFound, Message: "no such endpoint: " + r.Method + " " + r.URL.Path}})
	})
	return mux
}

// guard authorises the caller by the role in its certificate (the TLS
// layer has already verified the chain) and turns handler errors into
// error replies.
func (d *Daemon) guard(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			writeError(w, apiError(api.CodeUnauthorized, "TLS required"))
			return
		}
		role, name, err := pki.PeerIdentity(*r.TLS)
		if err != nil {
			writeError(w, apiError(api.CodeUnauthorized, "no valid client identity: "+err.Error()))
			return
		}
		allowed := false
		for _, ro := range rt.roles {
			allowed = allowed || ro == role
		}
		if !allowed {
			writeError(w, apiError(api.CodeUnauthorized, fmt.Sprintf("%s %q may not call %s", role, name, rt.pattern)))
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), callerKey{}, caller{role, name}))
		if err := rt.handle(w, r); err != nil {
			e := d.toAPIError(err)
			if e.Status >= 500 {
				d.log.Warn("API request failed", "method", r.Method, "path", r.URL.Path, "caller", name, "err", err)
			} else {
				d.log.Debug("API request refused", "method", r.Method, "path", r.URL.Path, "caller", name, "err", err)
			}
			writeError(w, e)
		}
	})
}

type callerKey struct{}

type caller struct {
	role pki.Role
	name string
}

func callerOf(r *http.Request) caller {
	c, _ := r.Context().Value(callerKey{}).(caller)
	return c
}

// apiError builds an error reply of the given code.
func apiError(code, msg string) *api.Error {
	return &api.Error{Status: api.StatusFor(code), Detail: api.ErrorDetail{Code: code, Message: msg}}
}

// toAPIError classifies an error from the cluster or the state machine.
func (d *Daemon) toAPIError(err error) *api.Error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	code := api.CodeInternal
	switch {
	case errors.Is(err, state.ErrNotFound):
		code = api.CodeNotFound
	case errors.Is(err, state.ErrSnapshotsDisabled):
		code = api.CodeDisabled
	case errors.Is(err, state.ErrNoSpace):
		code = api.CodeNoSpace
	case errors.Is(err, state.ErrExists), errors.Is(err, state.ErrInUse),
		errors.Is(err, state.ErrInvalidTransition), errors.Is(err, state.ErrFenced),
		errors.Is(err, state.ErrChecksumMismatch):
		code = api.CodeConflict
	case errors.Is(err, state.ErrInvalid), errors.Is(err, state.ErrLimit), errors.Is(err, command.ErrInvalid):
		code = api.CodeInvalid
	case errors.Is(err, cluster.ErrUnknownOutcome):
		code = api.CodeUnknownResult
	case errors.Is(err, cluster.ErrNoLeader), errors.Is(err, cluster.ErrNotLeader), errors.Is(err, cluster.ErrClosed),
		errors.Is(err, context.DeadlineExceeded):
		code = api.CodeUnavailable
	}
	e := apiError(code, err.Error())
	if code == api.CodeUnavailable {
		if id, _ := d.node.Leader(); id != "" {
			e.Detail.Leader = id
		}
	}
	return e
}

func writeError(w http.ResponseWriter, e *api.Error) {
	writeJSON(w, e.Status, api.ErrorBody{Error: e.Detail})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// readJSON decodes a request body strictly.
func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apiError(api.CodeInvalid, "malformed request body: "+err.Error())
	}
	return nil
}

// propose commits a command and turns a business refusal into an error.
func (d *Daemon) propose(ctx context.Context, cmd command.Command) (state.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	res, err := d.node.Propose(ctx, cmd)
	if err != nil {
		return res, err
	}
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

// waitApplied waits until this node's state holds the given log index, so
// that a read after a write through this node sees the write.
func (d *Daemon) waitApplied(ctx context.Context, index uint64) error {
	return d.waitFor(ctx, func() bool { i, _ := d.st.AppliedIndex(); return i >= index })
}

// waitFor polls cond until it holds, bounded by ctx and writeTimeout.
func (d *Daemon) waitFor(ctx context.Context, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the change to apply on this node: %w", ctx.Err())
		case <-t.C:
		}
	}
}
