package idem

import (
	"fmt"
	"log/slog"
	"time"
)

// Sync says when completed and failed records reach stable storage.
type Sync int

const (
	// SyncAlways makes Complete and Fail return only after the record is
	// fsynced. Concurrent completions share one transaction and one fsync
	// (group commit), so
	// the cost per completion falls as concurrency rises. Loss window: none
	// for records whose Complete returned.
	SyncAlways Sync = iota

	// SyncPeriodic fsyncs every Options.SyncInterval in the background.
	// Complete returns before its record is on disk. Loss window: records
	// completed in the last SyncInterval before a power failure or kernel
	// crash. A crash of the process alone loses nothing written.
	SyncPeriodic

	// SyncNever leaves writing back to the operating system. Loss window on
	// power failure or kernel crash: whatever the kernel had not yet written
	// back (on Linux typically up to 30 seconds). A crash of the process
	// alone loses nothing written.
	SyncNever
)

// String returns "always", "periodic" or "never".
func (s Sync) String() string {
	switch s {
	case SyncAlways:
		return "always"
	case SyncPeriodic:
		return "periodic"
	case SyncNever:
		return "never"
	default:
		return fmt.Sprintf("unknown sync mode: %d", int(s))
	}
}

// Limits on sizes.
const (
	// DefaultMaxKeySize is the default for Options.MaxKeySize, in bytes.
	DefaultMaxKeySize = 255
	// MaxKeySizeLimit is the largest Options.MaxKeySize accepted: Badger's
	// key limit less the room the store needs for its own prefix.
	MaxKeySizeLimit = 60000
	// DefaultCacheSize is the read cache of the embedded store when
	// Options.CacheSize is zero, in bytes: about 8000 records of 1 KiB.
	DefaultCacheSize = 8 << 20
	// DefaultMaxResponseSize is the default for Options.MaxResponseSize.
	DefaultMaxResponseSize = 1 << 20
	// MaxResponseSizeLimit is the largest Options.MaxResponseSize
	// accepted: Badger refuses values over its 64 MiB value-log file, and
	// a response is an API answer, not a file store.
	MaxResponseSizeLimit = 32 << 20
	// MaxFingerprintSize is the largest fingerprint Begin accepts. A
	// fingerprint is a digest; SHA-512 is 64 bytes.
	MaxFingerprintSize = 1024
)

// Options configure a Store. A nil *Options, and every zero field, means
// the default named in the field's comment.
type Options struct {
	// LeaseTTL is how long a lease lasts unless extended. Zero means 30s.
	LeaseTTL time.Duration
	// CompletedTTL is how long a completed record is kept and replayed.
	// Zero means 24h. WithTTL overrides it per call.
	CompletedTTL time.Duration
	// FailedTTL is how long a failed record is kept. Zero means 24h.
	// WithTTL overrides it per call.
	FailedTTL time.Duration
	// GCInterval is how often background expiry runs. Zero means 5m; a
	// negative value turns the background loop off (CollectGarbage can
	// still be called).
	GCInterval time.Duration

	// InMemory keeps the embedded store in memory only (Open with dir
	// ""). Nothing survives Close. Zero means on disk. Embedded store only:
	// New refuses it.
	InMemory bool
	// ReadOnly makes every write return ErrReadOnly; Open then opens the
	// data directory read-only, sharing it with other read-only
	// processes. Zero means read-write.
	ReadOnly bool

	// Now is the store's clock: every expiry and lease decision is made by
	// it. Nil means time.Now. Tests pass a clock they move.
	Now func() time.Time
	// Logger receives the store's log lines (takeovers, lost leases,
	// reused keys, expiry runs) and Badger's warnings and errors. Nil means
	// silent.
	Logger *slog.Logger

	// MaxKeySize is the longest key accepted, in bytes. Zero means 255; at
	// most MaxKeySizeLimit.
	MaxKeySize int
	// MaxResponseSize is the largest response Complete and Fail accept, in
	// bytes. Zero means 1 MiB; at most MaxResponseSizeLimit.
	MaxResponseSize int

	// Sync says when completed and failed records reach stable storage.
	// Zero means SyncAlways. Embedded store only: New refuses it, since
	// other backends have durability settings of their own.
	Sync Sync
	// SyncInterval is the fsync period under SyncPeriodic. Zero means 1s.
	// Embedded store only.
	SyncInterval time.Duration
	// DiskReserve is the free space, in bytes, that the embedded store's
	// writes leave on its file system: below it they return ErrNoSpace
	// and reads go on. Badger writes through memory mappings, where a
	// full disk kills the process instead of failing a write, so the
	// reserve covers what Badger may write before it frees anything
	// (see internal/badgerkv.DefaultReserve for the arithmetic). Zero
	// means 144 MiB; negative turns the check off. Free space is checked
	// at most every few milliseconds and cannot stop another process
	// from filling the disk meanwhile: raise the reserve by what other
	// writers to the file system may write in a moment. Embedded store
	// only.
	DiskReserve int64
	// DiscardDamagedLog lets Open go on when a log of the data directory
	// is damaged in its middle (a bad entry with valid entries after it,
	// which Badger's recovery would drop without a word): what precedes
	// the damage is kept, so nothing acknowledged before it is lost, and
	// the rest is discarded and logged at Error level. False means Open
	// refuses such a directory with ErrCorrupt naming the file, the
	// offset and what would be lost, and changes nothing. The torn end a
	// crash or power loss leaves is the normal end of a log and needs no
	// option. Embedded store only.
	DiscardDamagedLog bool

	// CacheSize is the size in bytes of a read cache of completed and
	// failed records in front of the backend. Finished records do not
	// change until they expire, so Get and the replay path of Begin can be
	// answered without a backend read. Zero means DefaultCacheSize (8 MiB)
	// for the embedded store (Open), whose every write goes through this
	// Store, filled by replays only (a Get of a key read once would pay for
	// filling it); and no cache for New: with several instances on one
	// Redis or Postgres, a Delete made by another instance is not seen by
	// this cache until the cached record's own expiry or CacheTTL, so there
	// it is the caller's choice. A size set here is filled by Gets and
	// replays alike. Negative means no cache.
	CacheSize int64
	// CacheTTL bounds how long a record stays cached. Zero means 1m.
	CacheTTL time.Duration
	// defaultCache says CacheSize is the embedded store's default, which
	// replays fill and Gets do not (see Store.cacheGets).
	defaultCache bool

	// MaxWaiters bounds the calls of Wait waiting at once. Zero means
	// DefaultMaxWaiters (1024).
	MaxWaiters int
	// WaitPoll is how often Wait reads a record again, for holders in
	// other processes that share the store (Redis, Postgres). Zero means
	// 100ms.
	WaitPoll time.Duration

	// Observer is told the outcome and duration of every Begin, Get and
	// lease step, for latency metrics. Nil means none.
	Observer Observer
}

// withDefaults returns a copy of o with every zero field set to its default,
// or an error naming the field that is out of range.
func (o *Options) withDefaults() (Options, error) {
	var r Options
	if o != nil {
		r = *o
	}
	for _, f := range []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{
		{"LeaseTTL", &r.LeaseTTL, DefaultLeaseTTL},
		{"CompletedTTL", &r.CompletedTTL, DefaultCompletedTTL},
		{"FailedTTL", &r.FailedTTL, DefaultFailedTTL},
		{"SyncInterval", &r.SyncInterval, time.Second},
		{"CacheTTL", &r.CacheTTL, time.Minute},
		{"WaitPoll", &r.WaitPoll, 100 * time.Millisecond},
	} {
		if *f.d < 0 {
			return r, fmt.Errorf("idem: Options.%s is negative (%v)", f.name, *f.d)
		}
		if *f.d == 0 {
			*f.d = f.def
		}
	}
	if r.GCInterval == 0 {
		r.GCInterval = DefaultGCInterval
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.MaxKeySize == 0 {
		r.MaxKeySize = DefaultMaxKeySize
	}
	if r.MaxKeySize < 0 || r.MaxKeySize > MaxKeySizeLimit {
		return r, fmt.Errorf("idem: Options.MaxKeySize %d out of range (1 to %d)", r.MaxKeySize, MaxKeySizeLimit)
	}
	if r.MaxResponseSize == 0 {
		r.MaxResponseSize = DefaultMaxResponseSize
	}
	if r.MaxResponseSize < 0 || r.MaxResponseSize > MaxResponseSizeLimit {
		return r, fmt.Errorf("idem: Options.MaxResponseSize %d out of range (1 to %d)", r.MaxResponseSize, MaxResponseSizeLimit)
	}
	if r.Sync < SyncAlways || r.Sync > SyncNever {
		return r, fmt.Errorf("idem: Options.Sync: %v", r.Sync)
	}
	if r.MaxWaiters == 0 {
		r.MaxWaiters = DefaultMaxWaiters
	}
	if r.MaxWaiters < 0 {
		return r, fmt.Errorf("idem: Options.MaxWaiters is negative (%d)", r.MaxWaiters)
	}

	return r, nil
}
