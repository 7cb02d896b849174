// Command twinsnap is the admin CLI of a twinsnap system.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "twinsnap: the admin CLI is not built yet; see docs/architecture.md")
	os.Exit(2)
}
