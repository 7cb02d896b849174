//go:build !race

package disk

// raceEnabled: the race detector slows compression tenfold; the heaviest
// property tests run fewer cases under it.
const raceEnabled = false
