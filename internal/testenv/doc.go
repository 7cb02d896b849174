// Package testenv starts the real components that twinsnap's tests, demo
// and benchmarks run against: QEMU guests under TCG running the real
// qemu-guest-agent, a private Samba server, a private libvirtd, and the
// guest image they boot.
//
// Every component is started under a temporary directory, carries the
// marker "twinsnap-testenv" in its command line so that strays can be
// found, and is stopped when its test ends (or, for processes, when the
// test binary dies, through a parent-death signal).
//
// When the environment variable CI is "true", a component that cannot be
// started fails the test instead of skipping it.
package testenv
