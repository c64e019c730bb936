package badgerkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Writes are group-committed: concurrent compare-and-swaps are gathered
// into one Badger transaction. Durable writes under SyncAlways gather in
// one queue, whose batch is committed and then made durable by one
// DB.Sync, started after the commit. Under SyncNever and SyncPeriodic,
// where no write waits for a sync, every write gathers in a second queue
// the same way; under SyncAlways, a write that needs no sync (a claim, a
// renewal) commits on its own, so that it never waits behind a durable
// batch (kv.go, CompareAndSwap). While one batch commits (and syncs), the
// writers that arrive gather into the next; a writer that finds its queue
// idle commits its own write at once, so a lone caller pays no hand-off.
// Each swap in a batch is still decided on its own (read, compare, write,
// in arrival order; a later swap of the same key sees the earlier one's
// write), so batching changes the cost, not the outcome.

// Limits on one batch, well inside Badger's transaction limits for the
// memtable size in badgerOptions; a batch always takes at least one write.
// A batch Badger still finds too big is split in two. (Variables so that a
// test can force the split.)
// blockedWritesLimit bounds how long a batch waits while Badger refuses
// writes.
const blockedWritesLimit = time.Minute

var (
	batchMaxWrites = 256
	batchMaxBytes  = 128 << 10 // Badger's limit is 15% of memTableSize, 269 KiB
)

type queuedWrite struct {
	key      []byte
	old, new []byte
	expireAt time.Time

	current []byte
	swapped bool
	err     error
	done    chan struct{}
}

type commitQueue struct {
	durable bool       // batches are synced: durable writes under SyncAlways
	alone   bool       // each write commits in a transaction of its own, never queued
	mu      sync.Mutex // protects pending and running
	pending []*queuedWrite
	running bool // a batch is committing: one at a time (docs/decisions.md, "Durability and Badger's Sync")
}

// queuedCAS is CompareAndSwap through q.
func (b *DB) queuedCAS(ctx context.Context, q *commitQueue, key string, old, new []byte, expireAt time.Time) ([]byte, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	w := &queuedWrite{key: dbKey(key), old: old, new: new, expireAt: expireAt}
	if q.alone {
		b.commitBatch(q, []*queuedWrite{w})
		return w.current, w.swapped, w.err
	}
	q.mu.Lock()
	if !q.running {
		// The queue is idle (and so nothing is pending: a batch that ends
		// with writes pending goes on with them): w's writer commits a
		// batch of w alone, at once.
		q.running = true
		q.mu.Unlock()
		b.commitBatches(q, []*queuedWrite{w})
		return w.current, w.swapped, w.err
	}
	w.done = make(chan struct{})
	q.pending = append(q.pending, w)
	q.mu.Unlock()
	// Once queued, the write goes ahead whatever ctx says: waiting for it
	// is the only way to know whether it happened.
	<-w.done
	return w.current, w.swapped, w.err
}

// commitBatches commits batch and then, while writes are pending, goes on
// with them in a new goroutine; otherwise it marks the queue idle. It
// returns after batch.
func (b *DB) commitBatches(q *commitQueue, batch []*queuedWrite) {
	b.commitBatch(q, batch)
	for _, w := range batch {
		if w.done != nil {
			close(w.done)
		}
	}
	q.mu.Lock()
	next := q.takeBatch()
	if next == nil {
		q.running = false
	}
	q.mu.Unlock()
	if next != nil {
		go b.commitBatches(q, next)
	}
}

// takeBatch removes and returns the first pending writes, at most one
// batch of them, or nil when none are pending. q.mu must be held.
func (q *commitQueue) takeBatch() []*queuedWrite {
	n, size := 0, 0
	for n < len(q.pending) && n < batchMaxWrites && (n == 0 || size+len(q.pending[n].new) <= batchMaxBytes) {
		size += len(q.pending[n].new)
		n++
	}
	if n == 0 {
		q.pending = nil
		return nil
	}
	batch := q.pending[:n:n]
	q.pending = q.pending[n:]
	return batch
}

// commitBatch decides and commits batch, and syncs it when q is durable,
// setting each write's result.
func (b *DB) commitBatch(q *commitQueue, batch []*queuedWrite) {
	// The memtable the batch lands in is the newest one seen so far or a
	// later one (only the durable queue's batches, one at a time, use
	// memFid).
	var first int
	op := "write"
	if q.durable {
		first, op = b.memFid, "durable write"
	}
	commit := func() error {
		return b.guard(op, func() error {
			return b.db.Update(func(txn *badger.Txn) error {
				for _, w := range batch {
					if err := w.apply(txn); err != nil {
						return err
					}
				}
				return nil
			})
		})
	}
	var err error
	for {
		err = commit()
		if errors.Is(err, badger.ErrBlockedWrites) {
			// The writers wait for the batch whatever their contexts say,
			// so the wait for writes that Badger blocks for a moment
			// (reclaim) is bounded here.
			ctx, cancel := context.WithTimeout(context.Background(), blockedWritesLimit)
			err = blockedRetry(ctx, commit)
			cancel()
		}
		if !errors.Is(err, badger.ErrConflict) {
			break
		}
		// Another transaction wrote one of the keys after this one read
		// it: decide the whole batch again from what is stored now.
	}
	if errors.Is(err, badger.ErrTxnTooBig) && len(batch) > 1 {
		half := len(batch) / 2
		b.commitBatch(q, batch[:half:half])
		b.commitBatch(q, batch[half:])
		return
	}
	err = b.writeErr(op, err)
	swapped := false
	for _, w := range batch {
		w.err = err
		if err != nil {
			w.current, w.swapped = nil, false
		}
		swapped = swapped || w.swapped
	}
	if err != nil || !swapped || !q.durable {
		return
	}
	err = b.guard("fsync", b.sync)
	if err == nil {
		err = b.syncRotated(first)
	}
	if err != nil {
		// After a failed fsync the kernel may have dropped the dirty
		// pages: what Badger holds in memory and what is on disk may
		// differ, and a later fsync can succeed without writing them.
		err = b.fail("fsync", fmt.Errorf("fsync: %w", err))
		for _, w := range batch {
			if w.swapped {
				w.err = err
			}
		}
	}
}

// apply decides and stages w in txn.
func (w *queuedWrite) apply(txn *badger.Txn) error {
	w.current, w.swapped = nil, false
	item, err := txn.Get(w.key)
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
	case err != nil:
		return err
	default:
		if w.current, err = item.ValueCopy(nil); err != nil {
			return err
		}
	}
	if (w.current == nil) != (w.old == nil) || !bytes.Equal(w.current, w.old) {
		return nil
	}
	w.swapped, w.current = true, nil
	if w.new == nil {
		return txn.Delete(w.key)
	}
	e := badger.NewEntry(w.key, w.new)
	e.ExpiresAt = expirySeconds(w.expireAt)
	return txn.SetEntry(e)
}

// Badger's DB.Sync makes only the active memtable's write-ahead log
// durable (and the value log). When the memtable a batch landed in was
// rotated out before the sync (it fills every 1.75 MiB of writes, and
// Begin's writes fill it too), its log becomes durable only once Badger
// has flushed it to a table, a moment later. syncRotated closes that gap:
// memtable files are numbered in order of creation, so the batch is in a
// file numbered from first, the newest before the commit, to the newest
// now; every one of them but the newest is fsynced by path (fsync covers
// the writes Badger made through its memory mapping). A file already gone
// was flushed to a table, which Badger syncs before deleting the log.
func (b *DB) syncRotated(first int) error {
	if b.dir == "" {
		return nil
	}
	last := b.newestMemFid()
	for fid := first; fid < last; fid++ {
		err := b.fsyncFile(memFilePath(b.dir, fid))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("memtable %d: %w", fid, err)
		}
	}
	return nil
}

// newestMemFid returns the number of the newest memtable file, looking on
// from the last one seen. Badger numbers memtables in order and flushes
// them in order, so while the last one seen still exists and the next
// does not, it is the newest. Once the last one seen is gone (flushed
// after rotations no batch saw), the directory is listed again.
func (b *DB) newestMemFid() int {
	if b.dir == "" {
		return 0
	}
	for {
		if b.memPaths[0] == "" || b.memPathsFid != b.memFid {
			b.memPaths = [2]string{memFilePath(b.dir, b.memFid), memFilePath(b.dir, b.memFid+1)}
			b.memPathsFid = b.memFid
		}
		if exists(b.memPaths[1]) {
			b.memFid++
			continue
		}
		if !exists(b.memPaths[0]) {
			if newest := newestMemFile(b.dir); newest > b.memFid {
				b.memFid = newest
				continue
			}
		}
		return b.memFid
	}
}

// memFilePath is where Badger v4 keeps memtable fid's write-ahead log.
func memFilePath(dir string, fid int) string {
	return filepath.Join(dir, fmt.Sprintf("%05d.mem", fid))
}

// newestMemFile returns the largest number of the memtable files in dir,
// or 0.
func newestMemFile(dir string) int {
	ents, _ := os.ReadDir(dir)
	newest := 0
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".mem")
		if !ok {
			continue
		}
		if fid, err := strconv.Atoi(name); err == nil && fid > newest {
			newest = fid
		}
	}
	return newest
}

func fsyncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
