package cluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
)

// Forwarding: a follower sends writes and membership changes to the leader
// over the node-to-node TLS port (channel byte 'F'). Each message is a
// 4-byte big-endian length and a JSON body.

// maxFrame bounds one forwarding message.
const maxFrame = command.MaxSize + 64*1024

// errUnreachable: the leader could not be reached before anything was
// sent; retrying cannot apply a command twice.
var errUnreachable = errors.New("cluster: leader unreachable")

type forwardOp string

const (
	opApply    forwardOp = "apply"
	opAddVoter forwardOp = "add-voter"
	opRemove   forwardOp = "remove"
)

type forwardRequest struct {
	Op      forwardOp `json:"op"`
	Data    []byte    `json:"data,omitempty"`
	ID      string    `json:"id,omitempty"`
	Address string    `json:"address,omitempty"`
}

type forwardResponse struct {
	// Code classifies a failure to commit: "not_leader", "unknown_outcome",
	// "error".
	Code    string      `json:"code,omitempty"`
	Message string      `json:"message,omitempty"`
	Result  *wireResult `json:"result,omitempty"`
}

// wireResult is state.Result on the wire; the business error travels as
// its code so that errors.Is works on the follower.
type wireResult struct {
	Index    uint64       `json:"index"`
	Term     uint64       `json:"term"`
	Type     command.Type `json:"type"`
	Ignored  bool         `json:"ignored,omitempty"`
	ErrCode  string       `json:"err_code,omitempty"`
	ErrMsg   string       `json:"err_msg,omitempty"`
	Affected []string     `json:"affected,omitempty"`
}

func toWire(r state.Result) *wireResult {
	w := &wireResult{Index: r.Index, Term: r.Term, Type: r.Type, Ignored: r.Ignored, Affected: r.Affected}
	if r.Err != nil {
		w.ErrCode, w.ErrMsg = state.ErrorCode(r.Err), r.Err.Error()
	}
	return w
}

func fromWire(w *wireResult) state.Result {
	r := state.Result{Index: w.Index, Term: w.Term, Type: w.Type, Ignored: w.Ignored, Affected: w.Affected}
	if w.ErrCode != "" {
		if sentinel := state.ErrorForCode(w.ErrCode); sentinel != nil {
			r.Err = &remoteError{msg: w.ErrMsg, sentinel: sentinel}
		} else {
			r.Err = errors.New(w.ErrMsg)
		}
	}
	return r
}

// remoteError is a business error reported by the leader; it matches its
// sentinel with errors.Is.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// forwarder is both ends of forwarding for one node.
type forwarder struct {
	n *Node

	mu    sync.Mutex
	addr  string   // leader address of the pooled connection
	conn  net.Conn // pooled connection to the leader, nil if none
	inUse bool
}

func newForwarder(n *Node) *forwarder { return &forwarder{n: n} }

// apply forwards an encoded command to the leader at addr.
func (f *forwarder) apply(ctx context.Context, addr string, data []byte) (state.Result, error) {
	resp, err := f.call(ctx, addr, forwardRequest{Op: opApply, Data: data})
	if err != nil {
		return state.Result{}, err
	}
	if resp.Result == nil {
		return state.Result{}, fmt.Errorf("cluster: leader %s sent no result", addr)
	}
	return fromWire(resp.Result), nil
}

// call sends one request and reads its response. A pooled connection is
// reused; a connection that fails before the request was written is
// replaced once.
func (f *forwarder) call(ctx context.Context, addr string, req forwardRequest) (*forwardResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("cluster: forward: %w", err)
	}
	conn, pooled, err := f.take(ctx, addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := writeFrame(conn, body); err != nil {
		conn.Close()
		f.release(addr, nil)
		if pooled && ctx.Err() == nil {
			return f.call(ctx, addr, req) // a stale pooled connection: once more on a fresh one
		}
		return nil, fmt.Errorf("%w: %s: %w", errUnreachable, addr, err)
	}
	raw, err := readFrame(conn)
	if err != nil {
		conn.Close()
		f.release(addr, nil)
		return nil, fmt.Errorf("%w: forwarded to %s, no answer: %w", ErrUnknownOutcome, addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	f.release(addr, conn)
	var resp forwardResponse
	if err := json.Unmarshal(raw, &resp); err != nil {
		return nil, fmt.Errorf("%w: bad answer from %s: %w", ErrUnknownOutcome, addr, err)
	}
	switch resp.Code {
	case "":
		return &resp, nil
	case "not_leader":
		return nil, fmt.Errorf("%w: %s: %s", ErrNotLeader, addr, resp.Message)
	case "unknown_outcome":
		return nil, fmt.Errorf("%w: %s", ErrUnknownOutcome, resp.Message)
	default:
		return nil, fmt.Errorf("cluster: leader %s: %s", addr, resp.Message)
	}
}

// take returns the pooled connection to addr or dials a new one.
func (f *forwarder) take(ctx context.Context, addr string) (net.Conn, bool, error) {
	f.mu.Lock()
	if f.conn != nil && f.addr == addr && !f.inUse {
		f.inUse = true
		c := f.conn
		f.mu.Unlock()
		return c, true, nil
	}
	f.mu.Unlock()
	conn, err := f.n.mux.dial(addr, chanForward, until(ctx, 5*time.Second))
	if err != nil {
		return nil, false, fmt.Errorf("%w: %s: %w", errUnreachable, addr, err)
	}
	return conn, false, nil
}

// release returns conn to the pool (nil drops the pooled one if it failed).
func (f *forwarder) release(addr string, conn net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if conn == nil {
		if f.addr == addr {
			f.conn, f.inUse = nil, false
		}
		return
	}
	if f.conn == conn {
		f.inUse = false
		return
	}
	if f.conn == nil || !f.inUse {
		if f.conn != nil {
			f.conn.Close()
		}
		f.conn, f.addr, f.inUse = conn, addr, false
		return
	}
	conn.Close() // the pool is busy with another one
}

// serve answers forwarded requests from peers until ctx ends.
func (f *forwarder) serve(ctx context.Context) {
	defer f.n.wg.Done()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			f.mu.Lock()
			if f.conn != nil {
				f.conn.Close()
			}
			f.mu.Unlock()
			return
		case conn := <-f.n.mux.forward:
			wg.Add(1)
			go func() {
				defer wg.Done()
				f.handle(ctx, conn)
			}()
		}
	}
}

// handle serves one forwarding connection.
func (f *forwarder) handle(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	for {
		raw, err := readFrame(conn)
		if err != nil {
			return
		}
		var req forwardRequest
		resp := &forwardResponse{}
		if err := json.Unmarshal(raw, &req); err != nil {
			resp.Code, resp.Message = "error", "malformed request: "+err.Error()
		} else {
			resp = f.answer(ctx, req)
		}
		body, err := json.Marshal(resp)
		if err != nil {
			return
		}
		if err := writeFrame(conn, body); err != nil {
			return
		}
	}
}

// answer executes one forwarded request on this node, if it leads.
func (f *forwarder) answer(ctx context.Context, req forwardRequest) *forwardResponse {
	n := f.n
	if !n.IsLeader() {
		return &forwardResponse{Code: "not_leader", Message: n.cfg.ID + " is not the leader"}
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	var err error
	switch req.Op {
	case opApply:
		var res state.Result
		res, err = n.applyLocal(ctx, req.Data)
		if err == nil {
			return &forwardResponse{Result: toWire(res)}
		}
	case opAddVoter:
		err = n.addVoterLocal(ctx, req.ID, req.Address)
	case opRemove:
		err = n.removeLocal(ctx, req.ID)
	default:
		return &forwardResponse{Code: "error", Message: fmt.Sprintf("unknown operation %q", req.Op)}
	}
	switch {
	case err == nil:
		return &forwardResponse{}
	case errors.Is(err, raft.ErrNotLeader):
		return &forwardResponse{Code: "not_leader", Message: err.Error()}
	case errors.Is(err, ErrUnknownOutcome):
		return &forwardResponse{Code: "unknown_outcome", Message: err.Error()}
	default:
		return &forwardResponse{Code: "error", Message: err.Error()}
	}
}

func writeFrame(w io.Writer, body []byte) error {
	if len(body) > maxFrame {
		return fmt.Errorf("cluster: frame of %d bytes exceeds %d", len(body), maxFrame)
	}
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	copy(buf[4:], body)
	_, err := w.Write(buf)
	return err
}

func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if size > maxFrame {
		return nil, fmt.Errorf("cluster: frame of %d bytes exceeds %d", size, maxFrame)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return body, nil
}
