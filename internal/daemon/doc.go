// Package daemon is the composition root of twinsnapd: it reads the node's
// configuration and wires the cluster, the hypervisor drivers, the snapshot
// engine, the export jobs and the API together.
package daemon
