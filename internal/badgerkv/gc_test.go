package badgerkv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// After every record expires, disk use falls to at most 20% of its peak
// within ten collections, and live records come through intact.
//
// Badger expires entries by the real clock, so this test waits a few real
// seconds for them to expire; the store's own expiry decisions are tested
// with an injected clock elsewhere.
func TestDiskReclaimAfterMassExpiry(t *testing.T) {
	n := 200_000
	if testing.Short() {
		n = 50_000
	}
	ctx := context.Background()
	b := openTemp(t)

	// Live records that must survive the reclaim.
	for i := 0; i < 100; i++ {
		put(t, b, fmt.Sprintf("live-%d", i), []byte("claimed"), false)
		put(t, b, fmt.Sprintf("live-%d", i), []byte("kept"), true)
	}
	// Mass of records in random key order that expire (physically) in a
	// couple of seconds.
	//
	// The peak is the most disk seen while loading: on a slow machine the
	// first records may expire, and be compacted away, before the last are
	// written.
	expires := time.Now().Add(2 * time.Second)
	wb := b.Badger().NewWriteBatch()
	var peak int64
	for i := 0; i < n; i++ {
		if i%10_000 == 0 {
			peak = max(peak, b.DiskUsage())
		}
		// Random bytes, so that a compressing filesystem cannot make
		// the peak look small.
		e := badger.NewEntry(dbKey(fmt.Sprintf("%016x", rand.Uint64())), randomBytes(200))
		e.ExpiresAt = uint64(expires.Unix()) + 1
		require.NoError(t, wb.SetEntry(e))
	}
	require.NoError(t, wb.Flush())
	peak = max(peak, b.DiskUsage())
	t.Logf("peak disk use: %.1f MB for %d records, loaded with %v to spare", float64(peak)/1e6, n, time.Until(expires))

	time.Sleep(time.Until(expires.Add(2 * time.Second)))
	var live int
	var after int64
	runs := 0
	for runs < 10 {
		start := time.Now()
		live, after = collect(t, b)
		runs++
		t.Logf("collection %d: %.1f MB, took %v", runs, float64(after)/1e6, time.Since(start))
		if after <= peak/5 {
			break
		}
	}
	t.Logf("after %d collections: %.1f MB (%.1f%% of peak)", runs, float64(after)/1e6, 100*float64(after)/float64(peak))
	assert.LessOrEqual(t, after, peak/5, "disk use after mass expiry")
	assert.Equal(t, 100, live)
	for i := 0; i < 100; i++ {
		v, err := b.Load(ctx, fmt.Sprintf("live-%d", i))
		require.NoError(t, err)
		assert.Equal(t, "kept", string(v))
	}
	// Another round with nothing to reclaim leaves the live records alone
	// and does not rewrite the tree.
	live, _ = collect(t, b)
	assert.Equal(t, 100, live)
}

// Reclaim is decided from Badger's key count, not from bytes on disk, and
// sees keys that are still only in the memtables: a burst of writes that
// expire, smaller than the memtables, is reclaimed too. Live records with
// several versions each (a claim, then a completion) do not set it off.
func TestReclaimDecision(t *testing.T) {
	ctx := context.Background()
	b := openTemp(t)
	const live = 2000
	for i := 0; i < live; i++ {
		put(t, b, fmt.Sprint("live-", i), []byte("claimed"), false)
		put(t, b, fmt.Sprint("live-", i), []byte("kept"), true)
	}
	require.Empty(t, b.Badger().Tables(), "the records should still be in the memtables")
	assert.False(t, b.shouldReclaim(live), "two versions of every live record are not garbage")

	// A burst of entries that have already expired (and tombstones), all
	// in the memtables.
	wb := b.Badger().NewWriteBatch()
	past := uint64(time.Now().Add(-time.Minute).Unix())
	for i := 0; i < 3*live; i++ {
		e := badger.NewEntry(dbKey(fmt.Sprint("gone-", i)), []byte("x"))
		e.ExpiresAt = past
		require.NoError(t, wb.SetEntry(e))
	}
	for i := 0; i < 5; i++ {
		require.NoError(t, wb.Delete(dbKey(fmt.Sprint("live-", i))))
	}
	require.NoError(t, wb.Flush())
	require.Empty(t, b.Badger().Tables(), "the burst should still be in the memtables")
	assert.Equal(t, uint64(4*live+1), b.countKeys(1<<30), "live, expired and deleted keys alike, and the epoch")

	n, _ := collect(t, b)
	assert.Equal(t, live-5, n)
	assert.Equal(t, uint64(live-5+1), b.countKeys(1<<30), "expired entries and tombstones should be gone")
	assert.False(t, b.shouldReclaim(n))
	v, err := b.Load(ctx, "live-10")
	require.NoError(t, err)
	assert.Equal(t, "kept", string(v))
}

func randomBytes(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(rand.Uint32())
	}
	return p
}

// Writes that arrive while reclaim blocks Badger's writes wait for it
// rather than fail.
func TestWritesDuringReclaim(t *testing.T) {
	ctx := context.Background()
	b := openTemp(t)
	done := make(chan struct{})
	errs := make(chan error, 1)
	go func() {
		defer close(done)
		for i := 0; i < 300; i++ {
			for _, durable := range []bool{false, true} {
				cur, err := b.Load(ctx, fmt.Sprint("k", i))
				if err == nil {
					_, _, err = b.CompareAndSwap(ctx, fmt.Sprint("k", i), cur, []byte{byte(i)}, time.Now().Add(time.Hour), durable)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}
	}()
	for i := 0; i < 5; i++ {
		require.NoError(t, b.reclaim())
	}
	<-done
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

// openTemp opens a DB in a fresh directory, closed at the end of the test.
func openTemp(t *testing.T) *DB {
	t.Helper()
	b, err := Open(Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b
}

// put writes value under key, as a claim and its completion do: a durable
// write when durable is set.
func put(t *testing.T, b *DB, key string, value []byte, durable bool) {
	t.Helper()
	ctx := context.Background()
	cur, err := b.Load(ctx, key)
	require.NoError(t, err)
	_, ok, err := b.CompareAndSwap(ctx, key, cur, value, time.Now().Add(time.Hour), durable)
	require.NoError(t, err)
	require.True(t, ok)
}

// present counts the keys Badger still returns (live ones), as the
// store's sweep would.
func present(t *testing.T, b *DB) int {
	t.Helper()
	n := 0
	require.NoError(t, b.Scan(context.Background(), "", func(string, []byte) error { n++; return nil }))
	return n
}

// collect runs one collection with the count of keys present.
func collect(t *testing.T, b *DB) (live int, after int64) {
	t.Helper()
	live = present(t, b)
	_, after, err := b.CollectGarbage(context.Background(), live)
	require.NoError(t, err)
	return live, after
}

// Every read-write open numbers itself one past the last, durably; a
// read-only open sees the last number; an in-memory DB is at 1.
func TestEpoch(t *testing.T) {
	dir := t.TempDir()
	for want := uint64(1); want <= 3; want++ {
		b, err := Open(Config{Dir: dir})
		require.NoError(t, err)
		assert.Equal(t, want, b.Epoch())
		require.NoError(t, b.Close())
	}
	b, err := Open(Config{Dir: dir, ReadOnly: true})
	require.NoError(t, err)
	assert.Equal(t, uint64(3), b.Epoch())
	require.NoError(t, b.Close())
	b, err = Open(Config{InMemory: true})
	require.NoError(t, err)
	assert.Equal(t, uint64(1), b.Epoch())
	require.NoError(t, b.Close())
}
