package smb

import (
	"encoding/binary"
	"net"
	"sync"
)

// wireConn watches the SMB2 messages a client sends on a direct-TCP
// connection (a 4-byte length, then the message) and counts them by their
// protection: go-smb2 v1.1.0 decides per session and tree whether to
// encrypt or sign, and does not say which it chose. The first bytes of a
// message tell: 0xFD 'S' 'M' 'B' is an SMB3 transform header (encrypted);
// 0xFE 'S' 'M' 'B' is a plain SMB2 header, signed when its flags carry
// SMB2_FLAGS_SIGNED.
type wireConn struct {
	net.Conn

	mu        sync.Mutex // guards the fields below
	frame     [4]byte    // the length prefix being read
	frameN    int
	remaining int      // bytes of the current message not yet seen
	head      [20]byte // the first bytes of the current message
	headN     int
	counted   bool // the current message is counted
	counts    wireCounts
}

// wireCounts counts client messages by protection.
type wireCounts struct {
	Encrypted, Signed, Plain int64
}

const (
	protoTransform  = "\xfdSMB"
	protoSMB2       = "\xfeSMB"
	smb2FlagsOffset = 16
	smb2FlagsSigned = 0x8
)

func (c *wireConn) Write(p []byte) (int, error) {
	c.observe(p)
	return c.Conn.Write(p)
}

// Counts returns the messages counted so far.
func (c *wireConn) Counts() wireCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts
}

func (c *wireConn) observe(p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(p) > 0 {
		if c.remaining == 0 {
			k := copy(c.frame[c.frameN:], p)
			c.frameN += k
			p = p[k:]
			if c.frameN == len(c.frame) {
				c.remaining = int(binary.BigEndian.Uint32(c.frame[:]) & 0xFFFFFF)
				c.frameN, c.headN, c.counted = 0, 0, false
			}
			continue
		}
		k := min(len(p), c.remaining)
		if c.headN < len(c.head) {
			c.headN += copy(c.head[c.headN:], p[:k])
		}
		p = p[k:]
		c.remaining -= k
		if !c.counted && (c.headN == len(c.head) || c.remaining == 0) {
			c.count()
		}
	}
}

func (c *wireConn) count() {
	c.counted = true
	if c.headN < 4 {
		return
	}
	switch string(c.head[:4]) {
	case protoTransform:
		c.counts.Encrypted++
	case protoSMB2:
		if c.headN >= smb2FlagsOffset+4 && binary.LittleEndian.Uint32(c.head[smb2FlagsOffset:])&smb2FlagsSigned != 0 {
			c.counts.Signed++
		} else {
			c.counts.Plain++
		}
	}
}
