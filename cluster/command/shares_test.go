package command

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// TestShareAddedNeverPrintsSealed formats a share-added command every way
// a log line, an error or a debug print might: the sealed password's bytes
// appear in none of them, in no encoding; the JSON payload (the log entry
// itself) keeps them.
func TestShareAddedNeverPrintsSealed(t *testing.T) {
	c := samples()["share-added"].(*ShareAdded)
	secret := []string{
		hex.EncodeToString(c.Password), strings.ToUpper(hex.EncodeToString(c.Password)),
		base64.StdEncoding.EncodeToString(c.Password), base64.RawURLEncoding.EncodeToString(c.Password),
		string(c.Password), fmt.Sprintf("%v", []byte(c.Password)),
	}
	var logs bytes.Buffer
	for _, h := range []slog.Handler{slog.NewTextHandler(&logs, nil), slog.NewJSONHandler(&logs, nil)} {
		slog.New(h).Info("apply", "cmd", c, "value", *c, "password", c.Password, "as command", Command(c))
	}
	out := []string{logs.String(), c.String(), c.GoString()}
	holder := struct {
		Cmd  Command
		Pw   Sealed
		List []Command
	}{c, c.Password, []Command{c}}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%o", "%b"} {
		out = append(out, fmt.Sprintf(verb, c), fmt.Sprintf(verb, *c), fmt.Sprintf(verb, c.Password), fmt.Sprintf(verb, holder))
	}
	out = append(out, fmt.Errorf("refused %v: %w", c, ErrInvalid).Error())
	for _, s := range out {
		for _, sec := range secret {
			if strings.Contains(s, sec) {
				t.Fatalf("sealed bytes printed (%q) in: %s", sec, s)
			}
		}
	}
	if !strings.Contains(c.String(), "sealed(34 bytes)") || !strings.Contains(logs.String(), "sealed(34 bytes)") {
		t.Fatalf("String %q / logs %q do not describe the password", c.String(), logs.String())
	}
	if Sealed(nil).String() != "none" {
		t.Fatalf("empty Sealed prints %q", Sealed(nil).String())
	}
	// The payload itself carries the sealed bytes, as base64.
	b, err := json.Marshal(c)
	if err != nil || !strings.Contains(string(b), base64.StdEncoding.EncodeToString(c.Password)) {
		t.Fatalf("JSON payload %s lost the sealed password: %v", b, err)
	}
}
