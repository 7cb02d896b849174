// Package qmptest is a fake QEMU monitor for unit tests: a QMP server on a
// net.Pipe or a unix socket whose commands are configured through function
// fields, and which can emit events, hang, drop the connection, send
// garbage and send oversized replies. Jobs simulates QEMU's job state
// machine (JOB_STATUS_CHANGE, BLOCK_JOB_COMPLETED, query-jobs, job-*).
//
// It speaks the wire protocol only and imports nothing from twinsnap, so
// that any QMP client can be tested against it.
package qmptest
