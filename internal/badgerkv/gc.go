package badgerkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// How disk space comes back after mass expiry, on Badger v4.
//
// Badger drops an expired entry only when a compaction rewrites the table
// holding it into the last level with no overlapping table below. With no
// new writes nothing triggers that: the memtable is flushed only when full
// (its .mem file keeps the expired entries forever), Flatten does nothing
// when one level holds all the data, value-log GC never sees records below
// the value threshold (all of ours), and the bottom level's own compaction
// skips tables younger than an hour or with little data known to be stale
// (staleness is recorded when a table is built, not when its entries
// expire). Waiting, or closing and reopening, reclaims nothing.
//
// What works (the measurements are in docs/decisions.md, "Getting disk
// space back after mass expiry"):
//
//  1. write and delete two marker keys at both ends of the keyspace, so
//     that the next table flushed overlaps every table below it;
//  2. flush every memtable to level 0 and compact it into the base level:
//     DropPrefix of a sentinel key does both (it needs one live key with
//     the prefix, or it does nothing);
//  3. Flatten: now that two levels hold data, it compacts into the last
//     level, and there expired entries and tombstones are dropped.
//
// The whole LSM tree is rewritten, so reclaim runs only when Badger
// holds many more keys than records present (see shouldReclaim). While
// DropPrefix runs, Badger refuses commits with ErrBlockedWrites for a
// moment; CompareAndSwap and Delete wait and retry.
var (
	gcLowMarker  = []byte("\x00gc-low")  // sorts before every record key ("r...")
	gcHighMarker = []byte("\xffgc-high") // and after
	gcSentinel   = []byte("\xffgc-sentinel")
)

// CollectGarbage implements GarbageCollector: value-log GC until Badger has
// nothing to rewrite, then, when Badger holds more than twice as many
// entries as there are records present, the reclaim procedure described
// above. present is the number of records the store's sweep saw.
func (b *DB) CollectGarbage(ctx context.Context, present int) (before, after int64, err error) {
	before = b.DiskUsage()
	defer func() { after = b.DiskUsage() }()
	if err := b.writable(); err != nil {
		return before, 0, err
	}
	for ctx.Err() == nil {
		if err := b.guard("value-log gc", func() error { return b.db.RunValueLogGC(0.5) }); err != nil {
			if errors.Is(err, ErrFailed) {
				return before, 0, err
			}
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				return before, 0, fmt.Errorf("value-log gc: %w", err)
			}
			break
		}
	}
	if err := ctx.Err(); err != nil {
		return before, 0, err
	}
	reclaim := false
	if err := b.guard("gc count", func() error { reclaim = b.shouldReclaim(present); return nil }); err != nil || !reclaim {
		return before, 0, err
	}
	if err := b.writable(); err != nil {
		return before, 0, err
	}
	if err := b.writeErr("reclaim", b.guard("reclaim", b.reclaim)); err != nil {
		return before, 0, fmt.Errorf("reclaim: %w", err)
	}
	return before, 0, nil
}

// shouldReclaim reports whether Badger holds many more keys than there are
// records still present (live ones and those expired but not yet dropped):
// the surplus is expired entries and tombstones, which only reclaim gives
// back.
//
// The keys are counted with a key-only iteration over every version,
// expired and deleted entries included, across the memtables and the
// tables alike (the tables' own key counts miss the memtables, which may
// hold everything after a burst of writes followed by silence, and count
// each version of a key apart). The iteration stops as soon as it passes
// the limit, so it costs about as much as the sweep that counted the
// records. The decision never depends on bytes of disk, which compressing
// filesystems report smaller than the data.
func (b *DB) shouldReclaim(present int) bool {
	limit := 2*uint64(present) + 1000
	return b.countKeys(limit) > limit
}

// countKeys counts the distinct keys in the store, expired and deleted
// ones included, stopping once the count passes limit.
func (b *DB) countKeys(limit uint64) uint64 {
	txn := b.db.NewTransaction(false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{AllVersions: true})
	defer it.Close()
	var n uint64
	var prev []byte
	for it.Rewind(); it.Valid() && n <= limit; it.Next() {
		k := it.Item().Key()
		if n > 0 && bytes.Equal(k, prev) {
			continue
		}
		prev = append(prev[:0], k...)
		n++
	}
	return n
}

func (b *DB) reclaim() error {
	err := b.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(gcLowMarker, nil); err != nil {
			return err
		}
		return txn.Set(gcHighMarker, nil)
	})
	if err != nil {
		return err
	}
	err = b.db.Update(func(txn *badger.Txn) error {
		if err := txn.Delete(gcLowMarker); err != nil {
			return err
		}
		return txn.Delete(gcHighMarker)
	})
	if err != nil {
		return err
	}
	if err := b.db.Update(func(txn *badger.Txn) error { return txn.Set(gcSentinel, nil) }); err != nil {
		return err
	}
	if err := b.db.DropPrefix(gcSentinel); err != nil {
		return err
	}
	return b.db.Flatten(2)
}

// blockedRetry runs fn again while Badger refuses writes for a moment
// (ErrBlockedWrites, during reclaim's DropPrefix), until ctx ends.
func blockedRetry(ctx context.Context, fn func() error) error {
	for {
		err := fn()
		if !errors.Is(err, badger.ErrBlockedWrites) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%v)", ctx.Err(), err)
		case <-time.After(time.Millisecond):
		}
	}
}
