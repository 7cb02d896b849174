// Package smb is an export.Transport over an SMB2/3 share, with go-smb2
// v1.1.0.
//
// One Transport is one TCP connection with one authenticated session
// (NTLMv2) and one mounted share; it does not reconnect. Wrap it with
// export.WithRetry and a redial function that calls Dial to survive a lost
// connection or a restarted server.
//
// Protection: go-smb2 encrypts every message when the server asks for it
// (Samba's `server smb encrypt = required`, or a share with `smb encrypt =
// required`), and signs them otherwise. The library does not say which it
// chose, so Dial watches the messages it sends on the connection and
// Encrypted and Signed report what went over the wire. With
// Config.RequireEncryption, Dial refuses a session that is not encrypted.
//
// Signing-only servers: go-smb2 v1.1.0 fails a request with "signing
// required" when a server that requires signing answers it first with an
// unsigned interim response, as servers do for requests they complete
// asynchronously (Samba: flushes that do not finish at once,
// reads and writes with its asynchronous I/O on). The request still
// completes at the server. The transport repeats such idempotent file calls
// (writes, flushes, truncations, reads) in place for up to half the call
// timeout and then reports export.ErrTransient, and takes such a close as
// done; a server that answers most writes asynchronously
// cannot be written to this way, so shares should require encryption,
// which go-smb2 also runs two to three times faster than signing.
//
// Throughput comes from concurrent WriteAt calls on one file (see
// export.WriteChunks): go-smb2 sends a single call's 1 MiB requests one at
// a time, but overlaps the requests of concurrent calls.
//
// Bounds: every call of the Transport runs under the context it is given,
// and every call on an open file under the context the file was opened
// with. go-smb2 only checks contexts between requests, so in addition no
// single call may take longer than Config.CallTimeout: when one does, the
// connection is closed, which fails every call in flight with
// export.ErrTransient.
package smb
