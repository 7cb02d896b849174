package volumes

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// children returns the images of container id whose backing file is path.
func (s *Store) children(ctx context.Context, id, path string) ([]string, error) {
	files, err := s.imageFiles(id)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range files {
		if f == path {
			continue
		}
		infos, err := infoChain(ctx, f, false)
		if err != nil {
			return nil, err
		}
		if b := backingOf(infos[0], f); b != "" && b == path {
			out = append(out, f)
		}
	}
	return out, nil
}

// backingOf returns the absolute backing path recorded in an image ("" if
// none), resolving a relative name against the image's directory.
func backingOf(in ImageInfo, imagePath string) string {
	b := in.FullBackingFile
	if b == "" {
		b = in.BackingFile
	}
	if b == "" {
		return ""
	}
	if !filepath.IsAbs(b) {
		b = filepath.Join(filepath.Dir(imagePath), b)
	}
	return filepath.Clean(b)
}

// RemoveFromChain deletes the image at path from container id without
// breaking the backing chain it belongs to: a chain is merged, not broken.
//
// Every child of path (an image of the container whose backing file is
// path) is first rebased, in qemu-img's safe mode, onto path's own backing
// file, or onto nothing when path is the base (the child becomes
// standalone). Safe-mode rebase copies into the child every cluster whose
// content differs between the old and the new backing, so the child's
// guest-visible content stays identical; then path is deleted.
//
// Rebase was chosen over committing the child into path and renaming: it
// leaves path untouched until it is deleted and changes the child only by
// adding clusters equal to what the child already read through path, and
// qemu-img switches the backing file in the header last. A rebase that is
// interrupted (crash, cancelled context) therefore leaves a valid chain
// with path still in it, and RemoveFromChain can simply be run again. A
// commit instead rewrites path in place and needs a rename of one image
// over another, which cannot be made atomic with the chain's other links.
// Its cost is proportional to the data of path that the child does not
// itself overwrite.
func (s *Store) RemoveFromChain(ctx context.Context, id, path string) error {
	abs, err := s.inContainer(id, path)
	if err != nil {
		return fmt.Errorf("remove image: %w", err)
	}
	if _, err := s.Get(id); err != nil {
		return fmt.Errorf("remove image: %w", err)
	}
	if _, err := tool("qemu-img"); err != nil {
		return fmt.Errorf("remove image: %w", err)
	}
	s.chainMu.Lock()
	defer s.chainMu.Unlock()
	if _, err := os.Lstat(abs); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove image %s: %w", abs, ErrNotFound)
	}
	infos, err := infoChain(ctx, abs, false)
	if err != nil {
		return fmt.Errorf("remove image %s: %w", abs, err)
	}
	newBacking := backingOf(infos[0], abs)
	kids, err := s.children(ctx, id, abs)
	if err != nil {
		return fmt.Errorf("remove image %s: finding children: %w", abs, err)
	}
	for _, kid := range kids {
		args := []string{"rebase", "-f", "qcow2"}
		if newBacking == "" {
			args = append(args, "-b", "")
		} else {
			// Relative to the child's directory, as CreateTarget records it.
			args = append(args, "-b", filepath.Base(newBacking), "-F", "qcow2")
		}
		if _, err := run(ctx, append(args, kid)...); err != nil {
			return fmt.Errorf("remove image %s: merging into child %s: %w", abs, kid, err)
		}
		after, err := infoChain(ctx, kid, false)
		if err != nil {
			return fmt.Errorf("remove image %s: child %s after rebase: %w", abs, kid, err)
		}
		if got := backingOf(after[0], kid); got != newBacking {
			return fmt.Errorf("remove image %s: child %s has backing %q after rebase, want %q", abs, kid, got, newBacking)
		}
	}
	if err := os.Remove(abs); err != nil {
		return fmt.Errorf("remove image %s: %w", abs, err)
	}
	if err := syncDir(filepath.Dir(abs)); err != nil {
		return fmt.Errorf("remove image %s: %w", abs, err)
	}
	return nil
}
