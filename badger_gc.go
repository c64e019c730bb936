package idem

import (
	"context"
	"errors"

	"github.com/dgraph-io/badger/v4"
)

// CollectGarbage implements GarbageCollector: value-log GC until Badger has
// nothing left to rewrite, then a compaction of every level so that tables
// holding only expired entries are rewritten, which is the only moment
// Badger drops expired entries from disk.
func (b *BadgerBackend) CollectGarbage(ctx context.Context) (before, after int64, err error) {
	before = b.DiskUsage()
	for ctx.Err() == nil {
		if err := b.db.RunValueLogGC(0.5); err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				return before, b.DiskUsage(), err
			}
			break
		}
	}
	if err := ctx.Err(); err != nil {
		return before, b.DiskUsage(), err
	}
	if err := b.db.Flatten(1); err != nil {
		return before, b.DiskUsage(), err
	}
	return before, b.DiskUsage(), nil
}
