// Package snapshot implements the snapshot workflow as an explicit phase
// machine: plan, capture, verify, replicate and complete, plus discard and
// delete. Each phase is idempotent and resumable after a restart. The
// package reaches hypervisors, the cluster and the peer node only through
// small interfaces it declares.
package snapshot
