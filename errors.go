package idem

import "errors"

// Errors returned by Begin, Get and Do when asking about a key.
var (
	// ErrInProgress is returned by Begin and Do when another caller holds a
	// live lease on the key. The record returned with it says when the lease
	// lapses (Record.LeaseUntil), which is what an HTTP Retry-After needs.
	ErrInProgress = errors.New("request in progress")

	// ErrFingerprintMismatch is returned by Begin and Do when the key is
	// stored with a different request fingerprint: the key was reused for
	// another request. The stored record is returned with it.
	ErrFingerprintMismatch = errors.New("key reused with a different request")

	// ErrNotFound is returned by Get when no record is stored under the key,
	// or when the stored record has expired.
	ErrNotFound = errors.New("record not found")
)

// Errors returned when ending or extending a lease.
var (
	// ErrLeaseLost is returned by Complete, Fail, Release and Extend when the
	// stored record no longer carries the lease's fencing token: the lease
	// lapsed and another caller took the key over, or the record was ended,
	// deleted or expired. Nothing is written. The operator repairs
	// (ForceRelease, ForceFail, ForceDelete) return a *ChangedError, which
	// matches it, when the stored record is no longer the one the operator
	// was shown.
	ErrLeaseLost = errors.New("lease lost")

	// ErrTokenExhausted is returned by Begin when the key's record carries
	// the largest fencing token, MaxToken, so no newer lease could be
	// fenced from the older ones. Only a record restored with such a token
	// can get there (tokens start below 2^52 and grow by one per lease).
	ErrTokenExhausted = errors.New("fencing token exhausted")
)

// Errors returned for bad input.
var (
	// ErrInvalidKey is returned when a key is empty, longer than
	// Options.MaxKeySize, not valid UTF-8, or holds control characters.
	ErrInvalidKey = errors.New("invalid key")

	// ErrTooLarge is returned by Complete, Fail and Do when a response is
	// larger than Options.MaxResponseSize, and by Begin when a fingerprint is
	// larger than MaxFingerprintSize. Nothing is written.
	ErrTooLarge = errors.New("too large")
)

// Errors about the store itself.
var (
	// ErrClosed is returned by every operation on a store after Close.
	ErrClosed = errors.New("store closed")

	// ErrCorrupt is returned when a stored record cannot be decoded (the
	// error names the key; other keys are served as usual), and by Open
	// when the data directory is damaged: a table, value log or MANIFEST
	// missing, truncated or unreadable, or a log with a bad entry and
	// valid entries after it (the error names the file; Open changes
	// nothing in the directory; see Options.DiscardDamagedLog).
	ErrCorrupt = errors.New("corrupt record")

	// ErrNoSpace is returned by writes to the embedded store while the
	// disk is, or is about to be, too full to write: less than
	// Options.DiskReserve is free. Reads go on, and writes work again by
	// themselves once space is freed.
	ErrNoSpace = errors.New("disk too full to write")

	// ErrStoreFailed is returned by every operation on the embedded store
	// after a storage error that may have left the engine inconsistent (a
	// failed fsync or file write: permission denied, no space, I/O error).
	// The error says which. Nothing acknowledged is lost: Close the store
	// and open it again (restart the process) once the disk is fixed.
	ErrStoreFailed = errors.New("storage failed")

	// ErrNeedsRecovery is returned by a read-only Open of a data
	// directory whose last read-write process ended without closing it
	// (a crash, a kill): its logs must be replayed by a read-write Open,
	// which a read-only Open never does.
	ErrNeedsRecovery = errors.New("data directory needs recovery")

	// ErrLocked is returned by Open when another process holds the data
	// directory: one process may open a data directory read-write.
	ErrLocked = errors.New("data directory is in use by another process")

	// ErrReadOnly is returned by writes to a store opened with
	// Options.ReadOnly.
	ErrReadOnly = errors.New("store is read-only")
)

// Errors returned by Do.
var (
	// ErrFailed is returned by Do when the key's stored outcome is a
	// permanent failure (see Permanent): the failure's response is returned
	// with it and fn is not run again.
	ErrFailed = errors.New("request failed permanently")
)
