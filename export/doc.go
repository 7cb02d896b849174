// Package export writes complete snapshots to, and reads them from, OVF
// packages: the descriptor, one disk file per volume and a SHA-256
// manifest. Transports (export/smb, export/local) sit behind one interface;
// decorators add retry and bandwidth limits, and jobs honour maintenance
// windows.
package export
