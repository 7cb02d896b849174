package exporttest_test

import (
	"testing"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/export/exporttest"
)

func TestMemoryConformance(t *testing.T) {
	exporttest.Run(t, func(t *testing.T) export.Transport { return exporttest.NewMemory() })
}
