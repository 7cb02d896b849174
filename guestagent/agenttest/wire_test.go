package agenttest

import "testing"

// TestEncodeReply checks the agent's reply formatting: a space after each
// colon and comma outside strings, escapes kept.
func TestEncodeReply(t *testing.T) {
	got := string(encodeReply(map[string]any{"return": []any{1, "a:\",b\\", map[string]int{"x": 2}}, "id": "q"}))
	want := `{"id": "q", "return": [1, "a:\",b\\", {"x": 2}]}` + "\n"
	if got != want {
		t.Fatalf("encodeReply = %q, want %q", got, want)
	}
}
