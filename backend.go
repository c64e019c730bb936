package idem

import (
	"context"
	"time"
)

// Backend is the storage under a Store: a map from keys to opaque bytes
// with one atomic primitive, compare-and-swap. The state machine, the
// encoding and the clock live in the Store, so a backend knows nothing of
// records; New runs the same state machine over any Backend.
//
// Implementations must be safe for simultaneous use by multiple goroutines.
// Errors are for system failures only (storage unreachable, I/O errors,
// context ended): an absent key is not an error, and a failed comparison is
// reported by swapped == false, not by an error.
type Backend interface {
	// Load returns the value stored under key, or nil when there is none
	// (absent or dropped at its expiry). The caller owns the returned slice.
	Load(ctx context.Context, key string) ([]byte, error)

	// CompareAndSwap atomically replaces the value under key with new when
	// the stored value equals old, byte for byte; old == nil means "absent".
	// new == nil deletes the key. The backend may drop the new value at
	// expireAt (by the real clock) and not before. It reports swapped ==
	// true when it replaced the value; otherwise nothing changed and current
	// is the value stored now (nil when absent), which the caller owns.
	//
	// durable asks that a swap be on stable storage before CompareAndSwap
	// returns; a backend does that as its durability setting allows, and
	// documents what it does.
	CompareAndSwap(ctx context.Context, key string, old, new []byte, expireAt time.Time, durable bool) (current []byte, swapped bool, err error)

	// Delete removes key. Deleting an absent key is a no-op and returns nil.
	Delete(ctx context.Context, key string) error

	// Scan calls fn with each stored key that begins with prefix and its
	// value, until fn returns an error, which Scan then returns. value is
	// valid only during the call. Scan never holds all keys in memory;
	// writes made during a scan may or may not be seen.
	Scan(ctx context.Context, prefix string, fn func(key string, value []byte) error) error

	// Close releases the backend's resources. The Store calls it once, from
	// Store.Close, after every operation has returned.
	Close() error
}

// GarbageCollector is implemented by backends that need periodic work to
// give disk space back (Badger's value-log GC and compaction). The store's
// background loop calls it every Options.GCInterval.
type GarbageCollector interface {
	// CollectGarbage does one round of clean-up and reports the bytes of
	// disk use before and after it. present is the number of records the
	// store's sweep just saw (live, expired but not yet dropped, and
	// undecodable), for backends that decide from it whether a costly
	// clean-up is worth it.
	CollectGarbage(ctx context.Context, present int) (before, after int64, err error)
}

// Checker is implemented by backends whose configuration can be wrong in
// ways only they know (a Redis key prefix that is not valid UTF-8). New
// calls Check once and refuses the backend when it returns an error.
type Checker interface {
	Check() error
}

// DiskUser is implemented by backends that can report their disk use in
// bytes.
type DiskUser interface {
	DiskUsage() int64
}

// Watcher is implemented by backends that can tell a Store when a key is
// written by any instance sharing the backend, so that Wait wakes at once
// instead of at its next poll (Options.WaitPoll). Wait still polls, in
// case a notification is lost.
type Watcher interface {
	// Watch returns a channel that receives, or is closed, once the value
	// under key may have changed after Watch returned, and the function
	// that stops watching (Wait calls it exactly once). ok is false when
	// the backend cannot watch now; Wait then polls only. A change made
	// after Watch returns must not be missed while the backend can
	// deliver notifications at all, so Wait calls Watch before it reads the
	// record.
	Watch(ctx context.Context, key string) (changed <-chan struct{}, stop func(), ok bool)
}
