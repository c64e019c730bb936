//go:build unix

package badgerkv

import (
	"io/fs"
	"syscall"
)

// allocated returns the bytes a file occupies on disk.
func allocated(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return int64(st.Blocks) * 512
	}
	return info.Size()
}

// exists reports whether a file is at path. It asks access(2), not
// stat(2): on Linux with fine-grained timestamps, reading a file's
// timestamps makes its next change update them at full precision, so a
// stat of the memtable's log after every sync made every next fsync write
// the inode too (measured: +35µs on a 140µs durable write).
func exists(path string) bool {
	return syscall.Access(path, 0) == nil // F_OK
}

// freeSpace returns the bytes available to unprivileged writers on the
// file system of dir.
func freeSpace(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
