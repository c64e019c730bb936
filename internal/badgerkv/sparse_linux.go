package badgerkv

import (
	"errors"
	"os"
	"syscall"
)

// seekData is Linux's SEEK_DATA.
const seekData = 3

// nextData returns the offset of the first byte at or after off that is
// not in a hole of the sparse file f, of size bytes, or off when the file
// system does not say. Badger preallocates its logs as sparse files, so
// the unused end of a log is skipped without reading it.
func nextData(f *os.File, off, size int64) int64 {
	n, err := f.Seek(off, seekData)
	switch {
	case errors.Is(err, syscall.ENXIO):
		return size // only a hole follows
	case err != nil || n < off:
		return off
	}
	return n
}
