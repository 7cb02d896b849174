package jsonframe

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	for _, tc := range []struct {
		name, in  string
		max, stop int
		want      []string
		err       error
	}{
		{name: "two objects on one line", in: `{"a":1}{"b":[2,{"c":"}"}]}`, max: 100, stop: NoStop, want: []string{`{"a":1}`, `{"b":[2,{"c":"}"}]}`}, err: io.EOF},
		{name: "spanning lines", in: "\n {\"a\":\n\"x\\\"}\"}\n", max: 100, stop: NoStop, want: []string{"{\"a\":\n\"x\\\"}\"}"}, err: io.EOF},
		{name: "stray byte", in: `x{"a":1}`, max: 100, stop: NoStop, err: ErrStray},
		{name: "too large", in: `{"a":"0123456789"}`, max: 10, stop: NoStop, err: ErrTooLarge},
		{name: "malformed", in: `{"a" 1}`, max: 100, stop: NoStop, err: ErrMalformed},
		{name: "truncated", in: `{"a":`, max: 100, stop: NoStop, err: ErrTruncated},
		{name: "stop inside", in: "{\"a\":\xff}", max: 100, stop: 0xFF, err: ErrStop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bufio.NewReaderSize(strings.NewReader(tc.in), 16) // small buffer: objects span chunks
			var got []string
			var err error
			for {
				var b []byte
				b, err = Read(r, tc.max, tc.stop)
				if err != nil {
					break
				}
				got = append(got, string(b))
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("objects %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReadLeavesStopByte(t *testing.T) {
	r := bufio.NewReader(strings.NewReader("{\"a\":\xff{\"b\":1}"))
	if _, err := Read(r, 100, 0xFF); !errors.Is(err, ErrStop) {
		t.Fatalf("%v", err)
	}
	if b, _ := r.ReadByte(); b != 0xFF {
		t.Fatalf("stop byte consumed: next is %#x", b)
	}
	if b, err := Read(r, 100, 0xFF); err != nil || string(b) != `{"b":1}` {
		t.Fatalf("after the stop byte: %q, %v", b, err)
	}
}
