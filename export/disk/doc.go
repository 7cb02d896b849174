// Package disk turns a stored snapshot chain into disk files for export
// packages, and reads disk files back on import.
//
// The writers (NewQCOW2, NewStreamOptimizedVMDK) produce a file as a
// Stream of chunks at known offsets, read straight from the chain
// (a volumes.View) with no local staging copy. Their output is
// deterministic: the same source and the same options give the same bytes
// and the same chunk boundaries, so a transport can write chunks in
// parallel with WriteAt, and a resumed export can regenerate, without
// sending, everything below the offset it reached to recompute the file's
// SHA-256. Bytes between chunks are zero: the transport leaves them
// unwritten in a new (sparse) file, or writes zeros where the file system
// needs it.
//
// VMDKReader parses a streamOptimized VMDK sequentially, as it arrives
// from a share, and writes the guest data into a sparse file. Everything
// it reads is untrusted: every field is checked and every allocation and
// decompression is bounded.
package disk
