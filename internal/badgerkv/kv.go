package badgerkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
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
	// memFid is the number of the newest memtable file the committer has
	// seen, and fsyncFile fsyncs one file by path (a test may watch it):
	// see syncRotated. Only the committing goroutine uses them.
	memFid      int
	memPaths    [2]string // the files of memFid and the one after it
	memPathsFid int       // the memFid of memPaths
	fsyncFile   func(path string) error

	stop chan struct{}
	wg   sync.WaitGroup
	dir  string
}

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
	db, err := badger.Open(badgerOptions(&cfg))
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return nil, fmt.Errorf("open %s: %w (%v)", dir, ErrLocked, err)
		}
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	b := &DB{db: db, mode: cfg.Sync, stop: make(chan struct{}), dir: dir}
	b.sync, b.fsyncFile = db.Sync, fsyncPath
	if dir != "" {
		b.memFid = newestMemFile(dir)
	}
	if cfg.InMemory || cfg.ReadOnly {
		b.mode = SyncNever
	}
	if b.mode == SyncPeriodic {
		b.wg.Add(1)
		go b.syncLoop(cfg.SyncInterval, cfg.Logger)
	}
	return b, nil
}

// badgerOptions sizes Badger for small records read by key: no
// compression, small memtables and tables, so that memory stays bounded at
// millions of records and compaction can drop expired tables piece by
// piece. docs/decisions.md ("Sizing Badger") has the measurements behind
// each number.
func badgerOptions(o *Config) badger.Options {
	bo := badger.DefaultOptions(o.Dir).
		WithInMemory(o.InMemory).
		WithReadOnly(o.ReadOnly).
		WithSyncWrites(false).
		WithNumVersionsToKeep(1).
		WithCompression(options.None).
		WithMemTableSize(12 << 20).
		WithNumMemtables(3).
		WithBaseTableSize(1 << 20).
		WithNumLevelZeroTables(2).
		WithNumCompactors(2).
		WithBlockCacheSize(64 << 20).
		WithValueLogFileSize(64 << 20).
		WithMetricsEnabled(false).
		WithLogger(badgerLogger{o.Logger})
	bo.TableSizeMultiplier = 1 // no With method in v4
	if o.InMemory {
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
			if err := b.db.Sync(); err != nil && log != nil {
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
	err := b.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(dbKey(key))
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	return v, err
}

// CompareAndSwap replaces the value under key with new when the stored
// value equals old (nil: absent); new == nil deletes the key. The value
// may be dropped from expireAt on, rounded up to Badger's whole seconds.
// It is one Badger update transaction:
// Get, compare, Set. A commit that conflicts with another transaction on
// the key is retried from the other's result. Under SyncAlways a durable
// swap is group-committed with others and returns once fsynced (see
// badger_commit.go).
func (b *DB) CompareAndSwap(ctx context.Context, key string, old, new []byte, expireAt time.Time, durable bool) ([]byte, bool, error) {
	if durable && b.mode == SyncAlways {
		return b.durableCAS(ctx, key, old, new, expireAt)
	}
	k := dbKey(key)
	for {
		if err := ctx.Err(); err != nil {
			return nil, false, err
		}
		var current []byte
		swapped := false
		err := blockedRetry(ctx, func() error {
			current, swapped = nil, false
			return b.db.Update(func(txn *badger.Txn) error {
				item, err := txn.Get(k)
				switch {
				case errors.Is(err, badger.ErrKeyNotFound):
				case err != nil:
					return err
				default:
					if current, err = item.ValueCopy(nil); err != nil {
						return err
					}
				}
				if (current == nil) != (old == nil) || !bytes.Equal(current, old) {
					return nil
				}
				swapped = true
				if new == nil {
					return txn.Delete(k)
				}
				e := badger.NewEntry(k, new)
				e.ExpiresAt = expirySeconds(expireAt)
				return txn.SetEntry(e)
			})
		})
		if errors.Is(err, badger.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		if !swapped {
			return current, false, nil
		}
		return nil, true, nil
	}
}

// Delete removes key; an absent key is not an error.
func (b *DB) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return blockedRetry(ctx, func() error {
		return b.db.Update(func(txn *badger.Txn) error { return txn.Delete(dbKey(key)) })
	})
}

// Scan calls fn with every key that begins with prefix and its value. It iterates in key order over one read
// snapshot, fetching values as it goes.
func (b *DB) Scan(ctx context.Context, prefix string, fn func(key string, value []byte) error) error {
	p := dbKey(prefix)
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
			err := item.Value(func(v []byte) error { return fn(k, v) })
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// Close stops the periodic sync, syncs once more,
// and closes Badger.
func (b *DB) Close() error {
	close(b.stop)
	b.wg.Wait()
	return b.db.Close()
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
