//go:build linux

package main

import (
	"strconv"
	"syscall"
)

// reporter formats reports into lines and writes them to the console.
type reporter struct {
	id         string
	fd         int
	seq        uint64
	line       []byte
	lastWindow []byte // the last window line, printed again before the next progress line
	repeat     bool
}

func newReporter(id string, fd int) *reporter {
	return &reporter{id: id, fd: fd, line: make([]byte, 0, 512), lastWindow: make([]byte, 0, 512)}
}

// run writes a line for every report until in is closed.
func (r *reporter) run(in <-chan report) {
	for rep := range in {
		r.seq++
		r.line = appendLine(r.line[:0], r.id, r.seq, &rep)
		if rep.kind == kindProgress && r.repeat {
			r.write(r.lastWindow)
			r.repeat = false
		}
		r.write(r.line)
		switch rep.kind {
		case kindWindow:
			r.lastWindow = append(r.lastWindow[:0], r.line...)
			r.repeat = true
		case kindFinal:
			r.write(r.line)
		}
	}
}

// write writes b whole to the console; errors are dropped (there is
// nowhere else to report them).
func (r *reporter) write(b []byte) {
	for len(b) > 0 {
		n, err := syscall.Write(r.fd, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return
		}
		b = b[n:]
	}
}

// appendLine appends the report line of rep, newline included, to b.
func appendLine(b []byte, id string, seq uint64, rep *report) []byte {
	start := len(b)
	b = append(b, "STALLMETER id="...)
	b = append(b, id...)
	b = appendUint(b, " seq=", seq)
	b = append(b, " kind="...)
	b = append(b, kindNames[rep.kind]...)
	b = appendUint(b, " window=", rep.window)
	b = appendUint(b, " iterations=", rep.iterations)
	b = appendUint(b, " max_gap_us=", uint64(rep.maxGap/1000))
	b = appendUint(b, " p99_gap_us=", uint64(rep.p99Gap/1000))
	b = appendUint(b, " max_gap_end_ns=", uint64(rep.maxGapEnd))
	b = appendUint(b, " max_write_us=", uint64(rep.maxWrite/1000))
	b = appendUint(b, " max_fsync_us=", uint64(rep.maxFsync/1000))
	b = appendUint(b, " errors=", rep.errors)
	b = append(b, " last_errno="...)
	b = strconv.AppendInt(b, int64(rep.lastErrno), 10)
	b = appendUint(b, " window_start_ns=", uint64(rep.start))
	b = appendUint(b, " window_end_ns=", uint64(rep.end))
	b = appendUint(b, " total_iterations=", rep.totalIterations)
	b = appendUint(b, " total_max_gap_us=", uint64(rep.totalMaxGap/1000))
	sum := fnv1a(b[start:])
	b = append(b, " sum="...)
	const hex = "0123456789abcdef"
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, hex[(sum>>shift)&0xf])
	}
	return append(b, '\n')
}

func appendUint(b []byte, key string, v uint64) []byte {
	return strconv.AppendUint(append(b, key...), v, 10)
}

// fnv1a returns the 32-bit FNV-1a hash of b.
func fnv1a(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h ^= uint32(c)
		h *= 16777619
	}
	return h
}
