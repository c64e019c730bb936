package badgerkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// openBackend opens a Badger backend in a fresh directory whose sync is
// wrapped by wrap.
func openBackend(t *testing.T, wrap func(sync func() error) func() error) *DB {
	t.Helper()
	b, err := Open(Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() {
		// A test that made the DB fail has checked that itself.
		if err := b.Close(); !errors.Is(err, ErrFailed) {
			require.NoError(t, err)
		}
	})
	b.sync = wrap(b.sync)
	return b
}

// Concurrent durable writes share transactions and fsyncs, and each returns
// only after an fsync that started after its write was committed.
func TestGroupCommitShares(t *testing.T) {
	var started, lastDone, calls atomic.Int64
	b := openBackend(t, func(sync func() error) func() error {
		return func() error {
			n := started.Add(1)
			calls.Add(1)
			err := sync()
			lastDone.Store(n)
			return err
		}
	})
	ctx := context.Background()
	const writers, rounds = 64, 20
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var prev []byte
			for r := 0; r < rounds; r++ {
				key := fmt.Sprintf("k%d", w)
				next := []byte(fmt.Sprintf("v%d", r))
				before := started.Load()
				_, swapped, err := b.CompareAndSwap(ctx, key, prev, next, time.Now().Add(time.Hour), true)
				require.NoError(t, err)
				require.True(t, swapped)
				if done := lastDone.Load(); done <= before {
					t.Errorf("returned on sync %d, which started before the write (after sync %d)", done, before)
				}
				prev = next
			}
		}()
	}
	wg.Wait()
	total := int64(writers * rounds)
	assert.Less(t, calls.Load(), total/4, "fsyncs are shared: %d for %d writes", calls.Load(), total)
	for w := 0; w < writers; w++ {
		v, err := b.Load(ctx, fmt.Sprintf("k%d", w))
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("v%d", rounds-1), string(v))
	}
}

// Batching changes the cost, not the outcome: of many durable and
// non-durable swaps from the same old value, exactly one wins, and every
// loser is told the winner's value.
func TestGroupCommitExactlyOne(t *testing.T) {
	t.Run("SyncAlways", func(t *testing.T) {
		exactlyOne(t, openBackend(t, func(sync func() error) func() error { return sync }))
	})
	// Under SyncNever every write goes through the queue of writes that
	// are not synced.
	t.Run("SyncNever", func(t *testing.T) {
		b, err := Open(Config{Dir: t.TempDir(), Sync: SyncNever})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, b.Close()) })
		exactlyOne(t, b)
	})
}

func exactlyOne(t *testing.T, b *DB) {
	ctx := context.Background()
	for round := 0; round < 20; round++ {
		key := fmt.Sprint("race-", round)
		_, _, err := b.CompareAndSwap(ctx, key, nil, []byte("start"), time.Now().Add(time.Hour), true)
		require.NoError(t, err)
		var wg sync.WaitGroup
		var wins atomic.Int32
		currents := make([][]byte, 32)
		for g := 0; g < 32; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cur, swapped, err := b.CompareAndSwap(ctx, key, []byte("start"), []byte(fmt.Sprint("by-", g)), time.Now().Add(time.Hour), g%4 != 0)
				require.NoError(t, err)
				if swapped {
					wins.Add(1)
				} else {
					currents[g] = cur
				}
			}()
		}
		wg.Wait()
		require.Equal(t, int32(1), wins.Load(), "round %d", round)
		stored, err := b.Load(ctx, key)
		require.NoError(t, err)
		for g, cur := range currents {
			if cur != nil {
				assert.Equal(t, stored, cur, "loser %d was told another value", g)
			}
		}
	}
}

// A failed fsync puts the DB in the failed state: the write reports it,
// and every later call fails with ErrFailed naming the cause without
// calling Badger. A reopen finds what was acknowledged.
func TestGroupCommitSyncError(t *testing.T) {
	boom := errors.New("disk on fire")
	var fail atomic.Bool
	dir := t.TempDir()
	b, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	sync := b.sync
	b.sync = func() error {
		if fail.Load() {
			return boom
		}
		return sync()
	}
	ctx := context.Background()
	_, _, err = b.CompareAndSwap(ctx, "a", nil, []byte("1"), time.Now().Add(time.Hour), true)
	require.NoError(t, err)
	fail.Store(true)
	_, _, err = b.CompareAndSwap(ctx, "b", nil, []byte("1"), time.Now().Add(time.Hour), true)
	require.ErrorIs(t, err, boom)
	require.ErrorIs(t, err, ErrFailed)
	assert.Contains(t, err.Error(), "fsync")
	fail.Store(false)
	_, _, err = b.CompareAndSwap(ctx, "c", nil, []byte("1"), time.Now().Add(time.Hour), true)
	require.ErrorIs(t, err, ErrFailed)
	require.ErrorIs(t, err, boom, "the failed state says why")
	_, err = b.Load(ctx, "a")
	require.ErrorIs(t, err, ErrFailed)
	require.ErrorIs(t, b.Close(), ErrFailed)

	b, err = Open(Config{Dir: dir})
	require.NoError(t, err)
	defer b.Close()
	v, err := b.Load(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, "1", string(v))
}

func TestBadgerLoggerLevels(t *testing.T) {
	var buf bytes.Buffer
	l := badgerLogger{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	l.Infof("info %d\n", 1)
	l.Debugf("debug %d", 2)
	assert.Empty(t, buf.String(), "info and debug are dropped")
	l.Warningf("careful %d\n", 3)
	l.Errorf("broken %d", 4)
	assert.Contains(t, buf.String(), `level=WARN msg="badger: careful 3"`)
	assert.Contains(t, buf.String(), `level=ERROR msg="badger: broken 4"`)
	badgerLogger{}.Errorf("silent when nil")
}

func TestExpirySeconds(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want uint64
	}{
		{time.Time{}, 0},
		{time.Unix(1000, 0), 1001},
		{time.Unix(1000, 1), 1002},
		{time.Unix(1000, 999_999_999), 1002},
		{time.Unix(-5, 0), 1},
	} {
		got := expirySeconds(tc.t)
		assert.Equal(t, tc.want, got, "%v", tc.t)
		if !tc.t.IsZero() && tc.t.Unix() > 0 {
			// Badger drops an entry once the Unix second reaches its
			// expiry: never before t.
			assert.Greater(t, int64(got), tc.t.Unix(), "%v", tc.t)
			assert.True(t, time.Unix(int64(got), 0).After(tc.t))
		}
	}
}

// A batch Badger refuses as too big is split, and every write in it is
// still decided and answered once.
func TestGroupCommitSplitsTooBigBatch(t *testing.T) {
	defer func(w, n int) { batchMaxWrites, batchMaxBytes = w, n }(batchMaxWrites, batchMaxBytes)
	batchMaxWrites, batchMaxBytes = 1<<20, 1<<30
	var syncs atomic.Int64
	b := openBackend(t, func(sync func() error) func() error {
		return func() error { syncs.Add(1); return sync() }
	})
	ctx := context.Background()
	value := bytes.Repeat([]byte("v"), 300<<10) // 40 of them exceed Badger's batch limit
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, swapped, err := b.CompareAndSwap(ctx, fmt.Sprint("big-", i), nil, value, time.Now().Add(time.Hour), true)
			assert.NoError(t, err)
			assert.True(t, swapped)
		}()
	}
	wg.Wait()
	for i := 0; i < 40; i++ {
		v, err := b.Load(ctx, fmt.Sprint("big-", i))
		require.NoError(t, err)
		require.Len(t, v, len(value))
	}
	assert.Positive(t, syncs.Load())
}

// When the memtable a durable batch landed in is rotated out before the
// group's DB.Sync (which syncs only the active memtable's log), the
// rotated memtable's log is fsynced too before the write returns; with no
// rotation, nothing more is fsynced.
func TestGroupCommitSyncsRotatedMemtable(t *testing.T) {
	ctx := context.Background()
	var rotate atomic.Bool
	var b *DB
	b = openBackend(t, func(sync func() error) func() error {
		return func() error {
			if rotate.Load() {
				// Other writers fill the memtable between the batch's
				// commit and its sync: more than one memtable's worth.
				wb := b.db.NewWriteBatch()
				for i := 0; i < 30_000; i++ { // 15 MiB, values small enough to live in the memtable
					if err := wb.Set([]byte(fmt.Sprint("filler-", i)), bytes.Repeat([]byte{'x'}, 512)); err != nil {
						return err
					}
				}
				if err := wb.Flush(); err != nil {
					return err
				}
			}
			return sync()
		}
	})
	var mu sync.Mutex
	var fsynced []string
	b.fsyncFile = func(path string) error {
		mu.Lock()
		fsynced = append(fsynced, path)
		mu.Unlock()
		return fsyncPath(path)
	}

	_, ok, err := b.CompareAndSwap(ctx, "quiet", nil, []byte("v"), time.Now().Add(time.Hour), true)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Empty(t, fsynced, "no rotation, nothing but DB.Sync")

	before := b.newestMemFid()
	rotate.Store(true)
	_, ok, err = b.CompareAndSwap(ctx, "rotated", nil, []byte("v"), time.Now().Add(time.Hour), true)
	require.NoError(t, err)
	require.True(t, ok)
	require.Greater(t, b.newestMemFid(), before, "the filler rotated the memtable")
	assert.Contains(t, fsynced, memFilePath(b.dir, before), "the memtable holding the write was fsynced")

	// An fsync that fails fails the write.
	rotate.Store(true)
	b.fsyncFile = func(string) error { return errors.New("disk on fire") }
	_, ok, err = b.CompareAndSwap(ctx, "failing", nil, []byte("v"), time.Now().Add(time.Hour), true)
	require.ErrorContains(t, err, "disk on fire")
	require.ErrorIs(t, err, ErrFailed)
	assert.True(t, ok, "the swap was committed; only its durability failed")
}
