package badgerkv

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Sync says when writes marked durable reach stable storage.
type Sync int

const (
	// SyncAlways group-commits durable writes and returns once fsynced.
	SyncAlways Sync = iota
	// SyncPeriodic fsyncs every Config.SyncInterval in the background.
	SyncPeriodic
	// SyncNever leaves writing back to the operating system.
	SyncNever
)

// Config configures a DB. Every field's zero value is its default.
type Config struct {
	Dir      string // the data directory; "" with InMemory
	InMemory bool   // keep everything in memory; nothing survives Close
	ReadOnly bool   // open read-only, sharing the directory with other readers

	Sync         Sync          // when durable writes reach stable storage
	SyncInterval time.Duration // the fsync period under SyncPeriodic; zero means 1s

	// Reserve is the free space, in bytes, that writes leave on the data
	// directory's file system: below it they return ErrNoSpace. Zero
	// means DefaultReserve; negative turns the check off.
	Reserve int64

	// DiscardDamagedLog lets a read-write open go on past damage inside
	// a write-ahead or value log (a bad entry with valid entries after
	// it): what precedes the damage is kept, the rest is discarded and
	// logged at Error level. False means Open refuses such a directory
	// with ErrCorrupt, changing nothing. The torn end a crash leaves
	// needs no option.
	DiscardDamagedLog bool

	Logger *slog.Logger // Badger's warnings and errors; nil means silent
}

// ErrLocked is returned by Open when another process holds the directory.
var ErrLocked = errors.New("data directory is in use by another process")

// DB is a key-value store on Badger: values are opaque bytes with a
// physical expiry, and its one write primitive is compare-and-swap. It
// knows nothing of what the values mean. Keys are stored under a one-byte
// namespace, so the database may later hold other kinds of entry beside
// them. A DB is safe for simultaneous use by multiple goroutines.
type DB struct {
	db      *badger.DB
	mode    Sync
	sync    func() error // db.Sync; a test may count calls
	commits commitQueue  // durable writes under SyncAlways, see commit.go
	writes  commitQueue  // every other write (see Open)
	// memFid is the number of the newest memtable file the committer has
	// seen, and fsyncFile fsyncs one file by path (a test may watch it):
	// see syncRotated. Only the durable queue's committer uses them.
	memFid      int
	memPaths    [2]string // the files of memFid and the one after it
	memPathsFid int       // the memFid of memPaths
	fsyncFile   func(path string) error

	stop  chan struct{}
	wg    sync.WaitGroup
	dir   string
	epoch uint64 // see Epoch
	log   *slog.Logger

	space  *spaceGuard               // nil: no check (in memory, read-only)
	failed atomic.Pointer[failedErr] // set once: the failed state, see faults.go
}

// Badger sizes, see badgerOptions.
const (
	memTableSize   = 1792 << 10 // 1.75 MiB
	baseTableSize  = 1 << 20
	valueThreshold = 64 << 10 // larger values go to the value log
)

// recordPrefix is the namespace of the stored keys in Badger.
const recordPrefix = "r"

// Open opens (creating if needed) the Badger database that cfg describes.
// Only one process may open a directory read-write; a second gets an error
// wrapping ErrLocked.
func Open(cfg Config) (*DB, error) {
	dir := cfg.Dir
	if cfg.InMemory && dir != "" {
		return nil, fmt.Errorf("in-memory store needs an empty dir, got %q", dir)
	}
	if !cfg.InMemory && dir == "" {
		return nil, errors.New("no data directory given (use an in-memory store instead)")
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = time.Second
	}
	if !cfg.InMemory {
		// Before Badger opens it: Badger changes a directory as it opens
		// it, and panics on some damage where no caller can recover.
		if err := checkBeforeOpen(&cfg); err != nil {
			return nil, fmt.Errorf("open %s: %w", dir, err)
		}
	}
	db, err := openBadger(badgerOptions(&cfg))
	if err != nil {
		switch {
		case strings.Contains(err.Error(), "Cannot acquire directory lock"):
			return nil, fmt.Errorf("open %s: %w (%v)", dir, ErrLocked, err)
		case strings.Contains(err.Error(), badger.ErrTruncateNeeded.Error()): // y.Wrapf keeps only the message
			return nil, fmt.Errorf("open %s: %w: the process that last wrote it ended without closing it (%v)", dir, ErrNeedsRecovery, err)
		}
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	b := &DB{db: db, mode: cfg.Sync, stop: make(chan struct{}), dir: dir, log: cfg.Logger}
	b.commits.durable = true
	if !cfg.InMemory && !cfg.ReadOnly && cfg.Reserve >= 0 {
		reserve := cfg.Reserve
		if reserve == 0 {
			reserve = DefaultReserve
		}
		b.space = newSpaceGuard(dir, reserve)
	}
	if cfg.InMemory {
		b.epoch = 1
	} else if b.epoch, err = b.bumpEpoch(cfg.ReadOnly); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open %s: epoch: %w", dir, err)
	}
	b.sync, b.fsyncFile = db.Sync, fsyncPath
	if dir != "" {
		b.memFid = newestMemFile(dir)
	}
	if cfg.InMemory || cfg.ReadOnly {
		b.mode = SyncNever
	}
	// Beside durable batches, a write that needs no sync (a claim, a
	// renewal) commits in a transaction of its own: gathered in a queue,
	// claims waited for each other while Badger's writer was busy with the
	// durable batch, and durable Do at 16 callers lost a tenth of its
	// throughput (docs/decisions.md).
	b.writes.alone = b.mode == SyncAlways
	if b.mode == SyncPeriodic {
		b.wg.Add(1)
		go b.syncLoop(cfg.SyncInterval, cfg.Logger)
	}
	return b, nil
}

// openBadger is badger.Open, with a panic in it returned as an error
// wrapping ErrCorrupt.
func openBadger(o badger.Options) (db *badger.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("%w: badger panicked while opening it: %v", ErrCorrupt, r)
		}
	}()
	return badger.Open(o)
}

// badgerOptions sizes Badger for small records read by key: no
// compression, small memtables and tables, so that memory stays bounded at
// millions of records and compaction can drop expired tables piece by
// piece. docs/decisions.md ("Sizing Badger") has the measurements behind
// each number. In short: Badger builds every table in a buffer that starts
// at twice the table size, doubles when it fills and is kept in a pool of
// eight for the next table, whatever its size; a memtable flush puts the
// whole memtable in one table. So the memtable (1.75 MiB) is small enough
// that its table fits the 2 MiB buffer of a 1 MiB table, and every buffer
// stays 2 MiB (for records of up to about 300 bytes). Small memtables need
// a value threshold under Badger's batch limit (15% of the memtable); L0
// waits for eight tables, and levels grow by 4x from 4 MiB, so that a
// compaction writes few tables at once.
func badgerOptions(o *Config) badger.Options {
	bo := badger.DefaultOptions(o.Dir).
		WithInMemory(o.InMemory).
		WithReadOnly(o.ReadOnly).
		WithSyncWrites(false).
		WithNumVersionsToKeep(1).
		WithCompression(options.None).
		WithMemTableSize(memTableSize).
		WithNumMemtables(3).
		WithValueThreshold(valueThreshold).
		WithBaseTableSize(baseTableSize).
		WithNumLevelZeroTables(8).
		WithBaseLevelSize(4 << 20).
		WithLevelSizeMultiplier(4).
		WithNumCompactors(2).
		WithBlockCacheSize(64 << 20).
		WithValueLogFileSize(64 << 20).
		WithMetricsEnabled(false).
		WithLogger(badgerLogger{o.Logger})
	bo.TableSizeMultiplier = 1 // no With method in v4
	if o.InMemory {
		// Without a value log the value threshold is the largest value
		// Badger accepts: keep 1 MiB, which needs memtables of 7 MiB or
		// more. An in-memory store holds all its data on the heap anyway.
		bo = bo.WithMemTableSize(12 << 20).WithValueThreshold(1 << 20)
		bo.Dir, bo.ValueDir = "", ""
	}
	return bo
}

func (b *DB) syncLoop(every time.Duration, log *slog.Logger) {
	defer b.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			err := b.guard("periodic sync", b.db.Sync)
			if err != nil && !errors.Is(err, ErrFailed) {
				err = b.fail("periodic sync", err)
			}
			if err != nil && log != nil {
				log.Error("idem: periodic sync failed", "err", err)
			}
		}
	}
}

// Badger returns the Badger database, for benchmarks and tools that need
// Badger itself.
func (b *DB) Badger() *badger.DB { return b.db }

// expirySeconds returns Badger's expiry for a value that may be dropped
// from t on: Badger expires entries in whole Unix seconds, at the second
// itself, so t is rounded up to the next whole second, and one more is
// added so that no rounding ever drops a value early. The zero time means
// never.
func expirySeconds(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	sec := t.Unix()
	if t.Nanosecond() > 0 {
		sec++
	}
	if sec < 0 {
		return 1
	}
	return uint64(sec) + 1
}

func dbKey(key string) []byte {
	k := make([]byte, 0, len(recordPrefix)+len(key))
	return append(append(k, recordPrefix...), key...)
}

// Load returns the value stored under key, or nil when there is none.
func (b *DB) Load(ctx context.Context, key string) ([]byte, error) {
	var v []byte
	err := b.guard("load", func() error {
		return b.db.View(func(txn *badger.Txn) error {
			item, err := txn.Get(dbKey(key))
			if err != nil {
				return err
			}
			v, err = item.ValueCopy(nil)
			return err
		})
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	return v, err
}

// CompareAndSwap replaces the value under key with new when the stored
// value equals old (nil: absent); new == nil deletes the key. The value
// may be dropped from expireAt on, rounded up to Badger's whole seconds.
// It is decided in one Badger update transaction (Get, compare, Set),
// group-committed with concurrent swaps (commit.go); a commit that
// conflicts with another transaction on the key is decided again from the
// other's result. Under SyncAlways a durable swap returns once fsynced.
func (b *DB) CompareAndSwap(ctx context.Context, key string, old, new []byte, expireAt time.Time, durable bool) ([]byte, bool, error) {
	if err := b.writable(); err != nil {
		return nil, false, err
	}
	q := &b.writes
	if durable && b.mode == SyncAlways {
		q = &b.commits
	}
	return b.queuedCAS(ctx, q, key, old, new, expireAt)
}

// Delete removes key; an absent key is not an error.
func (b *DB) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := b.writable(); err != nil {
		return err
	}
	return b.writeErr("delete", blockedRetry(ctx, func() error {
		return b.guard("delete", func() error {
			return b.db.Update(func(txn *badger.Txn) error { return txn.Delete(dbKey(key)) })
		})
	}))
}

// writable returns the failed state's error, or an error wrapping
// ErrNoSpace while free space is below the reserve.
func (b *DB) writable() error {
	if err := b.failure(); err != nil {
		return err
	}
	return b.space.check()
}

// Scan calls fn with every key that begins with prefix and its value. It iterates in key order over one read
// snapshot, fetching values as it goes.
func (b *DB) Scan(ctx context.Context, prefix string, fn func(key string, value []byte) error) error {
	p := dbKey(prefix)
	return b.guard("scan", func() error { return b.scan(ctx, p, fn) })
}

func (b *DB) scan(ctx context.Context, p []byte, fn func(key string, value []byte) error) error {
	return b.db.View(func(txn *badger.Txn) error {
		io := badger.DefaultIteratorOptions
		io.Prefix = p
		io.PrefetchSize = 64
		it := txn.NewIterator(io)
		defer it.Close()
		for it.Seek(p); it.ValidForPrefix(p); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			item := it.Item()
			k := string(item.Key()[len(recordPrefix):])
			err := item.Value(func(v []byte) error { return callUser(fn, k, v) })
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// callUser calls the caller's fn, marking a panic in it as the caller's
// for guard.
func callUser(fn func(key string, value []byte) error, k string, v []byte) error {
	defer func() {
		if r := recover(); r != nil {
			panic(userPanic{r})
		}
	}()
	return fn(k, v)
}

// Close stops the periodic sync, syncs once more, and closes Badger.
// Close never waits on Badger without bound: Badger's flush goroutine
// retries a table it cannot write forever, and its Close waits for it.
// Once the DB has failed, Close waits at most closeWait (a healthy DB
// closeWaitHealthy, which flushing the memtables takes well within) and
// then abandons Badger, returning an error wrapping ErrFailed: Badger's
// goroutines and the directory lock are left to the process's exit, so
// only another process (a restart) can reopen the directory. Nothing
// acknowledged is lost: it is in the write-ahead logs.
func (b *DB) Close() error {
	close(b.stop)
	b.wg.Wait()
	wait := closeWait
	if b.failure() == nil {
		wait = closeWaitHealthy
	}
	done := make(chan error, 1)
	go func() {
		// Not through guard: a failed DB still tries to close Badger, to
		// release the directory if it can.
		defer func() {
			if r := recover(); r != nil {
				done <- b.fail("close", fmt.Errorf("panic in badger: %v", r))
			}
		}()
		done <- b.db.Close()
	}()
	select {
	case err := <-done:
		if f := b.failure(); f != nil && !errors.Is(err, ErrFailed) {
			return errors.Join(f, err)
		}
		return err
	case <-time.After(wait):
		return fmt.Errorf("%w; badger did not close within %v and was abandoned", b.fail("close", errors.New("badger's close hung")), wait)
	}
}

// DiskUsage returns the bytes the data directory's files
// occupy on disk (allocated blocks, so preallocated sparse files count for
// what they really use).
func (b *DB) DiskUsage() int64 {
	if b.dir == "" {
		return 0
	}
	return DirUsage(b.dir)
}

// DirUsage returns the bytes of disk the files under dir occupy.
func DirUsage(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			n += allocated(info)
		}
		return nil
	})
	return n
}

// badgerLogger routes Badger's warnings and errors to a slog.Logger and
// drops its info and debug lines.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	if b.l != nil {
		b.l.Error("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
	}
}

func (b badgerLogger) Warningf(f string, a ...any) {
	if b.l != nil {
		b.l.Warn("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
	}
}

func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}
