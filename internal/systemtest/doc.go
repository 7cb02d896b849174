// Package systemtest holds tests that run whole twinsnap systems: separate
// twinsnapd processes on loopback, driven through the API and the admin
// CLI. It has no code of its own.
package systemtest
