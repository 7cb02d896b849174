// Package exporttest holds the conformance suite that every
// export.Transport (and every decorator around one) must pass, and an
// in-memory transport with fault hooks for tests of the layers above.
package exporttest
