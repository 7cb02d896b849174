package testenv_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/testenv"
)

func TestBuildGuestImage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := testenv.BuildGuestImage(ctx)
	testenv.Need(t, "guest image", err)
	for _, f := range []string{img.Kernel, img.Initrd, img.BootDisk} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatalf("built guest lacks %s: %v", f, err)
		}
		if st.Size() < 1<<20 {
			t.Fatalf("%s is only %d bytes", f, st.Size())
		}
	}
	again, err := testenv.BuildGuestImage(ctx)
	if err != nil {
		t.Fatalf("second build: %v", err)
	}
	if again.Key != img.Key || again.Initrd != img.Initrd {
		t.Fatalf("second build changed the image: %+v vs %+v", again, img)
	}
}
