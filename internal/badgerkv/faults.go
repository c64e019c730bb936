package badgerkv

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Errors about the disk under the store.
var (
	// ErrNoSpace is returned by writes while the free space of the data
	// directory's file system is below the reserve (Config.Reserve), and
	// by a write Badger refused for lack of space. Reads go on; writes
	// come back by themselves once space is freed.
	ErrNoSpace = errors.New("not enough free disk space to write")

	// ErrFailed is returned by every call after a write error that may
	// have left Badger inconsistent (a failed memtable creation, fsync or
	// file write: permission denied, no space, I/O error) or after a
	// panic inside Badger. The DB stops calling Badger; what was
	// acknowledged is on disk, and reopening the directory recovers it.
	ErrFailed = errors.New("storage failed: close and reopen the store")

	// ErrCorrupt is returned by Open when the data directory is damaged:
	// the error names the file. Open changes nothing in such a directory.
	ErrCorrupt = errors.New("data directory is damaged")

	// ErrNeedsRecovery is returned by a read-only Open of a directory
	// whose last read-write process ended without closing it (a crash, a
	// kill): its logs must be replayed, which writes, before a read-only
	// open can read it.
	ErrNeedsRecovery = errors.New("data directory needs recovery by a read-write open")
)

// failedErr is the error of the failed state: ErrFailed, with the
// operation and the cause that put the DB in it.
type failedErr struct {
	op    string
	cause error
}

func (e *failedErr) Error() string {
	return fmt.Sprintf("%v (after %s failed: %v)", ErrFailed, e.op, e.cause)
}
func (e *failedErr) Unwrap() []error { return []error{ErrFailed, e.cause} }

// failure returns the error of the failed state, or nil while the DB is
// healthy.
func (b *DB) failure() error {
	if f := b.failed.Load(); f != nil {
		return f
	}
	return nil
}

// fail puts the DB in the failed state with cause, unless it is in it
// already, and returns the state's error. The first cause stays.
func (b *DB) fail(op string, cause error) error {
	b.failed.CompareAndSwap(nil, &failedErr{op: op, cause: cause})
	err := b.failure()
	if b.log != nil && b.failed.Load().cause == cause {
		b.log.Error("idem: storage failed; every call now fails until the store is reopened", "op", op, "err", cause)
	}
	return err
}

// writeErr returns err from a write to Badger, putting the DB in the
// failed state first when err may have left Badger inconsistent: every
// error but the ones Badger returns before touching anything (a conflict,
// a transaction too big, writes blocked for a moment, a bad key or value)
// and the caller's own context ending. An error for lack of space is
// also ErrNoSpace.
func (b *DB) writeErr(op string, err error) error {
	switch {
	case err == nil,
		errors.Is(err, badger.ErrConflict),
		errors.Is(err, badger.ErrTxnTooBig),
		errors.Is(err, badger.ErrBlockedWrites),
		errors.Is(err, badger.ErrEmptyKey),
		errors.Is(err, badger.ErrInvalidKey),
		errors.Is(err, badger.ErrValueLogSize),
		errors.Is(err, context.Canceled),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, ErrNoSpace),
		errors.Is(err, ErrFailed):
		return err
	}
	failed := b.fail(op, err)
	// Badger's y.Wrapf keeps only the message of the cause.
	if errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), syscall.ENOSPC.Error()) {
		return errors.Join(ErrNoSpace, failed)
	}
	return failed
}

// guard runs fn, a call into Badger, turning a panic inside Badger into
// the failed state: Badger asserts by panicking (a nil memtable after a
// failed creation, for one). A panic of the caller's own code (inside
// Scan's fn, marked by user) goes on up.
func (b *DB) guard(op string, fn func() error) (err error) {
	if err := b.failure(); err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			if p, ok := r.(userPanic); ok {
				panic(p.v)
			}
			err = b.fail(op, fmt.Errorf("panic in badger: %v\n%s", r, debug.Stack()))
		}
	}()
	return fn()
}

// userPanic carries a panic of the caller's code through guard.
type userPanic struct{ v any }

// closeWait and closeWaitHealthy bound how long Close waits for Badger,
// once the DB has failed and while it is healthy (see Close).
var (
	closeWait        = 5 * time.Second
	closeWaitHealthy = 30 * time.Second
)
