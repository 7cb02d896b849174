//go:build linux

package main

import (
	"errors"
	"math/bits"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Linux clock ids and flags (not in package syscall).
const (
	clockMonotonic = 1
	timerAbstime   = 1
)

// monoNow returns CLOCK_MONOTONIC in nanoseconds.
func monoNow() int64 {
	var ts syscall.Timespec
	_, _, errno := syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic, uintptr(unsafe.Pointer(&ts)), 0)
	if errno != 0 {
		panic("stallmeter: clock_gettime(CLOCK_MONOTONIC): " + errno.Error())
	}
	return ts.Nano()
}

// sleepUntil sleeps until CLOCK_MONOTONIC reaches deadline (nanoseconds).
func sleepUntil(deadline int64) {
	ts := syscall.NsecToTimespec(deadline)
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_CLOCK_NANOSLEEP, clockMonotonic, timerAbstime, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
		if errno != syscall.EINTR {
			return
		}
	}
}

// recordSize is the size of one record: "seq=" 20 digits " ns=" 19 digits
// and a newline.
const recordSize = 48

// putRecord fills rec with the sequence number and time.
func putRecord(rec *[recordSize]byte, seq uint64, ns int64) {
	copy(rec[0:4], "seq=")
	putDec(rec[4:24], seq)
	copy(rec[24:28], " ns=")
	putDec(rec[28:47], uint64(ns))
	rec[47] = '\n'
}

// putDec writes v into b as decimal digits, right-aligned and zero-padded;
// digits that do not fit are dropped.
func putDec(b []byte, v uint64) {
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
}

// The gap histogram counts gaps in microseconds: exact below 32 µs, then
// 32 buckets per power of two, up to 2^36 µs (19 hours).
const (
	subBits  = 5
	subCount = 1 << subBits
	maxUs    = 1<<36 - 1
	nBuckets = (36 - subBits + 1) * subCount
)

type histogram [nBuckets]uint32

// bucketOf returns the bucket of a gap of us microseconds.
func bucketOf(us uint64) int {
	if us > maxUs {
		us = maxUs
	}
	if us < subCount {
		return int(us)
	}
	e := bits.Len64(us) - subBits - 1 // us>>e is in [subCount, 2*subCount)
	return (e+1)*subCount + int(us>>e) - subCount
}

// bucketUpper returns the largest gap, in microseconds, in bucket i.
func bucketUpper(i int) uint64 {
	if i < subCount {
		return uint64(i)
	}
	e := i/subCount - 1
	m := uint64(i%subCount + subCount)
	return (m+1)<<e - 1
}

// quantile returns the upper bound, in microseconds, of the bucket holding
// the q-quantile of n counted gaps.
func (h *histogram) quantile(q float64, n uint64) uint64 {
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n) + 0.999999)
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i := range h {
		seen += uint64(h[i])
		if seen >= rank {
			return bucketUpper(i)
		}
	}
	return maxUs
}

// window accumulates the gaps of one window.
type window struct {
	n          uint64
	start      int64
	iterations uint64
	maxGap     int64
	maxGapEnd  int64
	maxWrite   int64
	maxFsync   int64
	errors     uint64
	lastErrno  int
	hist       histogram
}

// reset begins window n at time start.
func (w *window) reset(n uint64, start int64) {
	*w = window{n: n, start: start, maxGapEnd: start}
}

// kind says what a report is.
type kind uint8

const (
	kindStart kind = iota
	kindProgress
	kindWindow
	kindFinal
)

var kindNames = [...]string{"start", "progress", "window", "final"}

// report is what the loop hands to the reporter: a summary of one window.
type report struct {
	kind            kind
	window          uint64
	iterations      uint64
	maxGap, p99Gap  int64 // nanoseconds; p99 rounded up to its bucket
	maxGapEnd       int64
	maxWrite        int64
	maxFsync        int64
	errors          uint64
	lastErrno       int
	start, end      int64
	totalIterations uint64
	totalMaxGap     int64
}

// meter is the measuring loop and the requests other goroutines make of it.
type meter struct {
	fd          int
	interval    int64
	records     uint64
	reportEvery int64
	deadline    int64 // CLOCK_MONOTONIC ns; 0 for none

	mark atomic.Bool
	stop atomic.Bool
	out  chan report
}

func newMeter(fd int, interval time.Duration, records int, reportEvery time.Duration) *meter {
	return &meter{
		fd:          fd,
		interval:    int64(interval),
		records:     uint64(records),
		reportEvery: int64(reportEvery),
		out:         make(chan report, 64),
	}
}

// summary returns the report of window w at time end.
func (m *meter) summary(k kind, w *window, end int64, totalIterations uint64, totalMaxGap int64) report {
	return report{
		kind:            k,
		window:          w.n,
		iterations:      w.iterations,
		maxGap:          w.maxGap,
		p99Gap:          int64(min(w.hist.quantile(0.99, w.iterations)*1000+999, uint64(w.maxGap))),
		maxGapEnd:       w.maxGapEnd,
		maxWrite:        w.maxWrite,
		maxFsync:        w.maxFsync,
		errors:          w.errors,
		lastErrno:       w.lastErrno,
		start:           w.start,
		end:             end,
		totalIterations: totalIterations,
		totalMaxGap:     totalMaxGap,
	}
}

// run measures until a stop request or the deadline, then sends the final
// report. It does not close m.out.
func (m *meter) run() {
	var (
		rec         [recordSize]byte
		cur         window
		seq         uint64
		last        int64
		totalIter   uint64
		totalMaxGap int64
		nextReport  int64
	)
	next := monoNow()
	for {
		seq++
		t0 := monoNow()
		putRecord(&rec, seq, t0)
		n, werr := syscall.Pwrite(m.fd, rec[:], int64((seq-1)%m.records)*recordSize)
		t1 := monoNow()
		ferr := syscall.Fsync(m.fd)
		t2 := monoNow()

		if seq == 1 {
			cur.reset(0, t2)
			m.out <- m.summary(kindStart, &cur, t2, 0, 0)
			nextReport = t2 + m.reportEvery
		} else {
			gap := t2 - last
			cur.iterations++
			totalIter++
			cur.hist[bucketOf(uint64(gap/1000))]++
			if gap > cur.maxGap {
				cur.maxGap, cur.maxGapEnd = gap, t2
			}
			totalMaxGap = max(totalMaxGap, gap)
			cur.maxWrite = max(cur.maxWrite, t1-t0)
			cur.maxFsync = max(cur.maxFsync, t2-t1)
		}
		last = t2
		if werr == nil && n != recordSize {
			werr = syscall.EIO // a short write of 48 bytes
		}
		for _, err := range [2]error{werr, ferr} {
			if err != nil {
				cur.errors++
				cur.lastErrno = errnoOf(err)
			}
		}

		if m.mark.Swap(false) {
			m.out <- m.summary(kindWindow, &cur, t2, totalIter, totalMaxGap)
			cur.reset(cur.n+1, t2)
		}
		if m.stop.Load() || (m.deadline > 0 && t2 >= m.deadline) {
			m.out <- m.summary(kindFinal, &cur, t2, totalIter, totalMaxGap)
			return
		}
		if m.reportEvery > 0 && t2 >= nextReport {
			select {
			case m.out <- m.summary(kindProgress, &cur, t2, totalIter, totalMaxGap):
			default: // the reporter is behind; progress is expendable
			}
			nextReport = t2 + m.reportEvery
		}

		next += m.interval
		if next <= t2 { // fell behind: skip to the next tick to come
			next += ((t2-next)/m.interval + 1) * m.interval
		}
		sleepUntil(next)
	}
}

// errnoOf returns the errno behind err, or -1.
func errnoOf(err error) int {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return int(errno)
	}
	return -1
}
