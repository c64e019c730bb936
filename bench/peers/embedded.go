package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/idemdb/idem"
)

func embeddedSpecs() []spec {
	var out []spec
	for _, g := range []int{1, 16} {
		out = append(out, spec{id: fmt.Sprintf("embedded-do-never-%d", g), group: "embedded", workers: g,
			title:   fmt.Sprintf("embedded, %d callers: Do with SyncNever vs a create-if-absent and a set transaction on Badger by hand", g),
			subject: "Do, SyncNever", baseline: "Badger: create-if-absent txn, set txn",
			subjectG: idemOSCache, baseG: rawBadger, target: 1.0, make: embeddedDoRow(g, false)})
	}
	out = append(out, spec{id: "embedded-do-durable-1", group: "embedded", workers: 1,
		title:   "embedded, 1 caller: durable Do (default) vs the same two Badger transactions and db.Sync",
		subject: "Do, durable (default)", baseline: "Badger: create-if-absent txn, set txn, db.Sync",
		subjectG: idemFsync, baseG: rawBadgerSynced, target: 1.0, fsync: true, make: embeddedDoRow(1, true)})
	out = append(out, spec{id: "embedded-do-durable-16", group: "embedded", workers: 16,
		title:   "embedded, 16 callers: durable Do (group commit) vs the same two Badger transactions and db.Sync per call",
		subject: "Do, durable (default)", baseline: "Badger: create-if-absent txn, set txn, db.Sync",
		subjectG: idemFsync, baseG: rawBadgerSynced, fsync: true, make: embeddedDoRow(16, true)})
	return out
}

// badgerOptions is internal/badgerkv's badgerOptions for a directory on
// disk, copied (the engine is internal to the parent module), so the
// hand-written side runs Badger exactly as idem does. Keep it in step
// with internal/badgerkv/kv.go.
func badgerOptions(dir string) badger.Options {
	bo := badger.DefaultOptions(dir).
		WithSyncWrites(false).
		WithNumVersionsToKeep(1).
		WithCompression(options.None).
		WithMemTableSize(1792 << 10).
		WithNumMemtables(3).
		WithValueThreshold(64 << 10).
		WithBaseTableSize(1 << 20).
		WithNumLevelZeroTables(8).
		WithBaseLevelSize(4 << 20).
		WithLevelSizeMultiplier(4).
		WithNumCompactors(2).
		WithBlockCacheSize(64 << 20).
		WithValueLogFileSize(64 << 20).
		WithMetricsEnabled(false).
		WithLogger(nil)
	bo.TableSizeMultiplier = 1
	return bo
}

// recordPrefix is the namespace byte idem's engine puts before its keys.
const recordPrefix = "r"

func embeddedDoRow(workers int, durable bool) func(*env) (*target, *target, error) {
	return func(e *env) (*target, *target, error) {
		opts := &idem.Options{Sync: idem.SyncNever}
		if durable {
			opts = nil
		}
		dir, err := e.tempDir("do")
		if err != nil {
			return nil, nil, err
		}
		s, err := idem.Open(dir, opts)
		if err != nil {
			return nil, nil, err
		}
		ctx := context.Background()
		keys := newKeyGen(workers)
		fn := func(context.Context) ([]byte, error) { return response, nil }
		subject := &target{close: s.Close, op: func(w int) error {
			k := keys.next(w)
			_, replayed, err := s.Do(ctx, k, fingerprint, fn)
			if err == nil && replayed {
				err = fmt.Errorf("new key %q was replayed", k)
			}
			return err
		}}

		rawDir, err := e.tempDir("do-raw")
		if err != nil {
			return nil, nil, errors.Join(err, s.Close())
		}
		db, err := badger.Open(badgerOptions(rawDir))
		if err != nil {
			return nil, nil, errors.Join(err, s.Close())
		}
		inProgress, completed := handWritten()
		rawKeys := newKeyGen(workers)
		baseline := &target{close: db.Close, op: func(w int) error {
			k := []byte(recordPrefix + rawKeys.next(w))
			expires := uint64(time.Now().Add(idem.DefaultCompletedTTL).Unix()) + 1
			if err := createIfAbsent(db, k, inProgress, expires); err != nil {
				return err
			}
			err := db.Update(func(txn *badger.Txn) error {
				return txn.SetEntry(&badger.Entry{Key: k, Value: completed, ExpiresAt: expires})
			})
			if err == nil && durable {
				err = db.Sync()
			}
			return err
		}}
		return subject, baseline, nil
	}
}

// createIfAbsent is the claim written by hand: one update transaction
// that writes v under k when k is absent, retried on a conflict.
func createIfAbsent(db *badger.DB, k, v []byte, expires uint64) error {
	for {
		err := db.Update(func(txn *badger.Txn) error {
			_, err := txn.Get(k)
			if err == nil {
				return fmt.Errorf("new key %q exists", k)
			}
			if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
			return txn.SetEntry(&badger.Entry{Key: k, Value: v, ExpiresAt: expires})
		})
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
}
