//go:build unix

package badgerkv

import (
	"errors"
	"os"
	"syscall"
)

// lockDir takes the lock Badger takes on the directory dir (flock on the
// directory itself: shared for a read-only open, exclusive otherwise),
// so that the checks before an open never read files another process is
// writing. It writes nothing. A directory that does not exist yet needs
// no lock. The lock must be released before Badger takes its own: the
// two would conflict.
func lockDir(dir string, readOnly bool) (release func(), err error) {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_EX | syscall.LOCK_NB
	if readOnly {
		how = syscall.LOCK_SH | syscall.LOCK_NB
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}
