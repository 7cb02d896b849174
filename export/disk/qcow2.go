package disk

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"
)

// qcow2 constants: version 3, 64 KiB clusters, 16-bit refcounts.
const (
	qcowClusterBits = 16
	qcowCluster     = 1 << qcowClusterBits
	qcowL2Entries   = qcowCluster / 8 // entries per L2 table
	qcowRBEntries   = qcowCluster / 2 // 16-bit refcounts per refcount block
	qcowRTEntries   = qcowCluster / 8 // entries per refcount table cluster
	qcowHeaderLen   = 104
	qcowOflagCopied = uint64(1) << 63
	// qcowMaxSize bounds the virtual size so no layout arithmetic overflows
	// (4 PiB, far beyond any volume).
	qcowMaxSize = int64(1) << 52
)

// QCOW2Options adjusts NewQCOW2. The zero value is the default.
type QCOW2Options struct {
	// ChunkSize is the size chunks are cut at: a multiple of 64 KiB up to
	// 64 MiB; 0 means DefaultChunkSize. Part of the output's identity:
	// a resumed export must use the same value.
	ChunkSize int
}

// run is a range of allocated guest clusters [start, end) whose first
// cluster is the rank-th data cluster of the image.
type run struct{ start, end, rank int64 }

// qcow2Layout is the whole file's layout, computed from the source's
// extents before any data is read. In host clusters: the header (0), the
// L1 table, the refcount table, the refcount blocks, the L2 tables (only
// for 512 MiB regions that hold data, in guest order) and the data
// clusters, in guest order.
type qcow2Layout struct {
	size    int64
	runs    []run
	data    int64   // number of data clusters
	l1Size  int64   // L1 entries
	l2Index []int64 // L1 index of each L2 table, ascending
	l1Off   int64   // host cluster of the L1 table
	l1Len   int64
	rtOff   int64 // refcount table
	rtLen   int64
	rbOff   int64 // refcount blocks
	rbLen   int64
	l2Off   int64 // first L2 table
	dataOff int64 // first data cluster
	total   int64 // clusters in the file
}

// newQCOW2Layout lays out a standalone qcow2 image of size bytes whose
// allocated clusters are those touched by ext.
func newQCOW2Layout(size int64, ext []extent) *qcow2Layout {
	l := &qcow2Layout{size: size}
	for _, e := range ext {
		a, b := e.start/qcowCluster, (e.start+e.length+qcowCluster-1)/qcowCluster
		if n := len(l.runs); n > 0 && l.runs[n-1].end >= a {
			if b > l.runs[n-1].end {
				l.data += b - l.runs[n-1].end
				l.runs[n-1].end = b
			}
			continue
		}
		l.runs = append(l.runs, run{start: a, end: b, rank: l.data})
		l.data += b - a
	}
	vclusters := (size + qcowCluster - 1) / qcowCluster
	l.l1Size = (vclusters + qcowL2Entries - 1) / qcowL2Entries
	for _, r := range l.runs {
		for i := r.start / qcowL2Entries; i <= (r.end-1)/qcowL2Entries; i++ {
			if n := len(l.l2Index); n == 0 || l.l2Index[n-1] != i {
				l.l2Index = append(l.l2Index, i)
			}
		}
	}
	l.l1Off = 1
	l.l1Len = ceilDiv(l.l1Size*8, qcowCluster)
	l.rtOff = l.l1Off + l.l1Len
	// The refcount structures count themselves: grow them until they
	// cover every cluster of the file.
	l.rbLen, l.rtLen = 1, 1
	for {
		total := 1 + l.l1Len + l.rtLen + l.rbLen + int64(len(l.l2Index)) + l.data
		rb := ceilDiv(total, qcowRBEntries)
		rt := ceilDiv(rb, qcowRTEntries)
		if rb <= l.rbLen && rt <= l.rtLen {
			l.total = total
			break
		}
		l.rbLen, l.rtLen = max(rb, l.rbLen), max(rt, l.rtLen)
	}
	l.rbOff = l.rtOff + l.rtLen
	l.l2Off = l.rbOff + l.rbLen
	l.dataOff = l.l2Off + int64(len(l.l2Index))
	return l
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// extent is a source extent in this package's own terms.
type extent struct{ start, length int64 }

// render writes host cluster h, which must be a metadata cluster, into
// dst (one cluster, zeroed by the caller).
func (l *qcow2Layout) render(h int64, dst []byte) {
	be := binary.BigEndian
	switch {
	case h == 0:
		copy(dst, "QFI\xfb")
		be.PutUint32(dst[4:], 3)                    // version
		be.PutUint32(dst[20:], qcowClusterBits)     // cluster_bits
		be.PutUint64(dst[24:], uint64(l.size))      // size
		be.PutUint32(dst[36:], uint32(l.l1Size))    // l1_size
		be.PutUint64(dst[40:], uint64(l.l1Off)<<16) // l1_table_offset
		be.PutUint64(dst[48:], uint64(l.rtOff)<<16) // refcount_table_offset
		be.PutUint32(dst[56:], uint32(l.rtLen))     // refcount_table_clusters
		be.PutUint32(dst[96:], 4)                   // refcount_order: 16 bits
		be.PutUint32(dst[100:], qcowHeaderLen)      // header_length
		// Header extensions follow at 104; the zero bytes there are the
		// end-of-extensions marker. No backing file, no snapshots, no
		// feature bits.
	case h < l.rtOff: // L1 table
		first := (h - l.l1Off) * qcowL2Entries
		for j := int64(0); j < qcowL2Entries && first+j < l.l1Size; j++ {
			p := sort.Search(len(l.l2Index), func(k int) bool { return l.l2Index[k] >= first+j })
			if p < len(l.l2Index) && l.l2Index[p] == first+j {
				be.PutUint64(dst[8*j:], uint64(l.l2Off+int64(p))<<16|qcowOflagCopied)
			}
		}
	case h < l.rbOff: // refcount table
		first := (h - l.rtOff) * qcowRTEntries
		for j := int64(0); j < qcowRTEntries && first+j < l.rbLen; j++ {
			be.PutUint64(dst[8*j:], uint64(l.rbOff+first+j)<<16)
		}
	case h < l.l2Off: // refcount block
		first := (h - l.rbOff) * qcowRBEntries
		for j := int64(0); j < qcowRBEntries && first+j < l.total; j++ {
			be.PutUint16(dst[2*j:], 1)
		}
	default: // L2 table
		i := l.l2Index[h-l.l2Off]
		lo, hi := i*qcowL2Entries, (i+1)*qcowL2Entries
		k := sort.Search(len(l.runs), func(k int) bool { return l.runs[k].end > lo })
		for ; k < len(l.runs) && l.runs[k].start < hi; k++ {
			r := l.runs[k]
			for g := max(r.start, lo); g < min(r.end, hi); g++ {
				host := l.dataOff + r.rank + (g - r.start)
				be.PutUint64(dst[8*(g-lo):], uint64(host)<<16|qcowOflagCopied)
			}
		}
	}
}

// qcow2Stream produces the image window by window: each window is one
// chunk-size-aligned range of host clusters, rendered or read whole, then
// cut into chunks at its all-zero clusters.
type qcow2Stream struct {
	src     Source
	l       *qcow2Layout
	window  int64 // clusters per window
	next    int64 // next host cluster to produce
	pending []Chunk
	err     error
	done    bool
}

var _ Stream = (*qcow2Stream)(nil)

// NewQCOW2 returns a Stream of a standalone qcow2 (version 3, 64 KiB
// clusters, no backing file) image of src.
//
// The layout is decided from src.Extents() alone, before any data is read,
// so Size is exact up front: every cluster an extent touches is allocated,
// and a cluster that turns out to hold only zeros stays allocated (it is
// data in the image). Its bytes are zero, so the Stream leaves it out as a
// gap rather than sending it; the same holds for any all-zero cluster of
// metadata. Deciding allocation from content instead would move every later
// cluster after reading, and the size would no longer be known up front.
func NewQCOW2(src Source, opts QCOW2Options) (Stream, error) {
	cs, err := checkChunkSize(opts.ChunkSize, qcowCluster)
	if err != nil {
		return nil, fmt.Errorf("qcow2 stream: %w", err)
	}
	size := src.Size()
	if size <= 0 || size > qcowMaxSize {
		return nil, fmt.Errorf("qcow2 stream: source size %d out of range: %w", size, ErrInvalid)
	}
	vext := src.Extents()
	if err := checkExtents(size, vext); err != nil {
		return nil, fmt.Errorf("qcow2 stream: %w", err)
	}
	ext := make([]extent, len(vext))
	for i, e := range vext {
		ext[i] = extent{e.Start, e.Length}
	}
	return &qcow2Stream{src: src, l: newQCOW2Layout(size, ext), window: int64(cs / qcowCluster)}, nil
}

// Size returns the image's size, known from the layout.
func (s *qcow2Stream) Size() int64 { return s.l.total * qcowCluster }

// Final returns the image's size once the stream has ended, -1 before.
func (s *qcow2Stream) Final() int64 {
	if !s.done {
		return -1
	}
	return s.Size()
}

// Next returns the next chunk of the image.
func (s *qcow2Stream) Next() (Chunk, error) {
	for len(s.pending) == 0 {
		if s.err != nil {
			return Chunk{}, s.err
		}
		if s.next >= s.l.total {
			s.done = true
			return Chunk{}, io.EOF
		}
		if err := s.fill(); err != nil {
			s.err = fmt.Errorf("qcow2 stream: %w", err)
			return Chunk{}, s.err
		}
	}
	c := s.pending[0]
	s.pending = s.pending[1:]
	return c, nil
}

// fill produces the window that starts at s.next.
func (s *qcow2Stream) fill() error {
	l := s.l
	first := s.next
	last := min(l.total, (first/s.window+1)*s.window)
	buf := make([]byte, (last-first)*qcowCluster)
	h := first
	for ; h < last && h < l.dataOff; h++ {
		l.render(h, buf[(h-first)*qcowCluster:(h-first+1)*qcowCluster])
	}
	if h < last {
		if err := s.readData(buf[(h-first)*qcowCluster:], h-l.dataOff, last-l.dataOff); err != nil {
			return err
		}
	}
	s.next = last
	// Cut the window into chunks at its all-zero clusters.
	start := int64(-1)
	for c := first; c <= last; c++ {
		zero := c == last || isZero(buf[(c-first)*qcowCluster:(c-first+1)*qcowCluster])
		switch {
		case !zero && start < 0:
			start = c
		case zero && start >= 0:
			s.pending = append(s.pending, Chunk{
				Off:  start * qcowCluster,
				Data: buf[(start-first)*qcowCluster : (c-first)*qcowCluster : (c-first)*qcowCluster],
			})
			start = -1
		}
	}
	return nil
}

// readData reads data clusters of ranks [r0, r1) into dst, one ReadAt per
// range of guest-contiguous clusters.
func (s *qcow2Stream) readData(dst []byte, r0, r1 int64) error {
	runs := s.l.runs
	k := sort.Search(len(runs), func(k int) bool { return runs[k].rank+(runs[k].end-runs[k].start) > r0 })
	for r := r0; r < r1; k++ {
		if k >= len(runs) {
			return fmt.Errorf("layout has no data cluster of rank %d: %w", r, ErrInvalid)
		}
		rn := runs[k]
		g := rn.start + (r - rn.rank)
		n := min(r1-r, rn.end-g)
		if err := readFull(s.src, dst[:n*qcowCluster], g*qcowCluster); err != nil {
			return err
		}
		dst = dst[n*qcowCluster:]
		r += n
	}
	return nil
}
