package guestagent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/guestagent/agenttest"
)

// FuzzReply runs a full Execute against a fake agent that syncs properly
// and then answers the command with arbitrary bytes (every "$ID" in them
// replaced by the command's id, so that matching and stale ids are both
// reachable) and closes the connection. The call must not panic, must end
// within its bound, must fail with one of the package's errors, and a
// value it returns must be the "return" member of the first well-formed
// reply that is not stale.
func FuzzReply(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		var (
			mu   sync.Mutex
			sent []byte
			id   string
		)
		a := agenttest.New()
		a.Fault = func(c agenttest.Command) agenttest.Action {
			if c.Name != "guest-fsfreeze-status" {
				return agenttest.Action{}
			}
			// Non-nil even when empty: a nil Reply means "reply normally".
			reply := append([]byte{}, bytes.ReplaceAll(data, []byte("$ID"), c.ID)...)
			mu.Lock()
			sent = reply
			_ = json.Unmarshal(c.ID, &id)
			mu.Unlock()
			return agenttest.Action{Reply: reply, Close: true}
		}
		s := guestagent.NewStream(a.Pipe(t))
		defer s.Close()

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		begin := time.Now()
		v, err := s.Execute(ctx, "guest-fsfreeze-status", nil)
		if d := time.Since(begin); d > 2*time.Second+limit {
			t.Fatalf("Execute bounded by 2s returned after %v", d)
		}
		if err != nil {
			var ge *guestagent.Error
			if !errors.Is(err, guestagent.ErrTimeout) && !errors.Is(err, guestagent.ErrClosed) &&
				!errors.Is(err, guestagent.ErrProtocol) && (!errors.As(err, &ge) || ge.Class == "") {
				t.Fatalf("Execute error %v is none of the package's", err)
			}
			return
		}
		mu.Lock()
		defer mu.Unlock()
		want, ok := expectReturn(sent, id)
		if !ok || !bytes.Equal(v, want) {
			t.Fatalf("Execute returned %q from %q; the first well-formed reply of ours returns %q (found %v)", v, sent, want, ok)
		}
	})
}

// expectReturn walks the replies in data as encoding/json reads them and
// returns the "return" member of the first well-formed reply whose id is
// absent or equal to id. It reports false if something the client must
// reject comes first: a value that is not an object, a member twice, an
// error reply, a reply with neither or both of return and error.
func expectReturn(data []byte, id string) (json.RawMessage, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil || raw[0] != '{' {
			return nil, false
		}
		members, ok := objectMembers(raw)
		if !ok {
			return nil, false
		}
		if rid, has := members["id"]; has {
			var s string
			if json.Unmarshal(rid, &s) != nil || s != id {
				continue // stale
			}
		}
		ret, hasRet := members["return"]
		if _, hasErr := members["error"]; hasErr || !hasRet {
			return nil, false
		}
		return ret, true
	}
}

// objectMembers returns the members of a JSON object by exact name, and
// false if a name appears twice.
func objectMembers(raw []byte) (map[string]json.RawMessage, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return nil, false
	}
	m := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, false
		}
		name := tok.(string)
		if _, dup := m[name]; dup {
			return nil, false
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, false
		}
		m[name] = v
	}
	return m, true
}
