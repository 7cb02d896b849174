// Command twinsnapd is the twinsnap node daemon, run on each of the two
// data nodes and on the witness.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "twinsnapd: the node daemon is not built yet; see docs/architecture.md")
	os.Exit(2)
}
