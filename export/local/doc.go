// Package local is an export.Transport over a directory of the local file
// system: a mounted share, a USB disk, a test's temporary directory.
//
// Every name is resolved below the root one element at a time with openat
// and O_NOFOLLOW from a descriptor of the root opened once, so no name can
// reach outside the root: ".." never gets that far (export.ValidName
// refuses it), and a symbolic link at any element, planted before or
// during an export, is refused with ErrSymlink instead of followed. The
// root's own path may hold symbolic links; they are resolved once, by New.
// Files are written with pwrite (os.File.WriteAt), renamed with
// renameat2(RENAME_NOREPLACE) (falling back to link and unlink where the
// file system lacks it), and every change to a directory (a created file
// or directory, a rename, a removal) is followed by an fsync of that
// directory.
package local
