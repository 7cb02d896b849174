//go:build !race

package state

// raceEnabled is true when the race detector instruments the tests.
const raceEnabled = false
