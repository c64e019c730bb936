package idem

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
	b, err := OpenBadger(t.TempDir(), nil)
	require.NoError(t, err)
	s := newStore(b, mustDefaults(t, &Options{GCInterval: -1}))
	defer s.Close()

	// Live records that must survive the reclaim.
	for i := 0; i < 100; i++ {
		_, _, err := s.Do(ctx, fmt.Sprintf("live-%d", i), nil, func(context.Context) ([]byte, error) { return []byte("kept"), nil })
		require.NoError(t, err)
	}
	// Mass of records in random key order that expire (physically) in a
	// couple of seconds.
	//
	// The peak is the most disk seen while loading: on a slow machine the
	// first records may expire, and be compacted away, before the last are
	// written.
	expires := time.Now().Add(2 * time.Second)
	wb := b.DB().NewWriteBatch()
	var peak int64
	for i := 0; i < n; i++ {
		if i%10_000 == 0 {
			peak = max(peak, b.DiskUsage())
		}
		// Random bytes, so that a compressing filesystem cannot make
		// the peak look small.
		rec := &Record{State: StateCompleted, Fingerprint: randomBytes(32), Response: randomBytes(150),
			Attempts: 1, Token: 1, CreatedAt: time.Now(), UpdatedAt: time.Now(), ExpiresAt: expires}
		e := badger.NewEntry(dbKey(fmt.Sprintf("%016x", rand.Uint64())), encodeRecord(rec))
		e.ExpiresAt = uint64(expires.Unix()) + 1
		require.NoError(t, wb.SetEntry(e))
	}
	require.NoError(t, wb.Flush())
	peak = max(peak, b.DiskUsage())
	t.Logf("peak disk use: %.1f MB for %d records, loaded with %v to spare", float64(peak)/1e6, n, time.Until(expires))

	time.Sleep(time.Until(expires.Add(2 * time.Second)))
	var rep GCReport
	runs := 0
	for runs < 10 {
		rep, err = s.CollectGarbage(ctx)
		require.NoError(t, err)
		runs++
		if rep.DiskAfter <= peak/5 {
			break
		}
	}
	t.Logf("after %d collections: %.1f MB (%.1f%% of peak), last run took %v", runs, float64(rep.DiskAfter)/1e6,
		100*float64(rep.DiskAfter)/float64(peak), rep.Took)
	assert.LessOrEqual(t, rep.DiskAfter, peak/5, "disk use after mass expiry")
	assert.Equal(t, 100, rep.Records)
	for i := 0; i < 100; i++ {
		rec, err := s.Get(ctx, fmt.Sprintf("live-%d", i))
		require.NoError(t, err)
		assert.Equal(t, "kept", string(rec.Response))
	}
	// Another round with nothing to reclaim leaves the live records alone
	// and does not rewrite the tree.
	rep, err = s.CollectGarbage(ctx)
	require.NoError(t, err)
	assert.Equal(t, 100, rep.Records)
}

// Reclaim is decided from Badger's key count, not from bytes on disk, and
// sees keys that are still only in the memtables: a burst of writes that
// expire, smaller than the memtables, is reclaimed too. Live records with
// several versions each (a claim, then a completion) do not set it off.
func TestReclaimDecision(t *testing.T) {
	ctx := context.Background()
	b, err := OpenBadger(t.TempDir(), nil)
	require.NoError(t, err)
	s := newStore(b, mustDefaults(t, &Options{GCInterval: -1}))
	defer s.Close()
	const live = 2000
	for i := 0; i < live; i++ {
		_, _, err := s.Do(ctx, fmt.Sprint("live-", i), nil, func(context.Context) ([]byte, error) { return []byte("kept"), nil })
		require.NoError(t, err)
	}
	require.Empty(t, b.DB().Tables(), "the records should still be in the memtables")
	assert.False(t, b.shouldReclaim(live), "two versions of every live record are not garbage")

	// A burst of entries that have already expired (and tombstones), all
	// in the memtables.
	wb := b.DB().NewWriteBatch()
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
	require.Empty(t, b.DB().Tables(), "the burst should still be in the memtables")
	assert.Equal(t, uint64(4*live), b.countKeys(1<<30), "live, expired and deleted keys alike")

	rep, err := s.CollectGarbage(ctx)
	require.NoError(t, err)
	assert.Equal(t, live-5, rep.Records)
	assert.Equal(t, uint64(live-5), b.countKeys(1<<30), "expired entries and tombstones should be gone")
	assert.False(t, b.shouldReclaim(rep.Records))
	rec, err := s.Get(ctx, "live-10")
	require.NoError(t, err)
	assert.Equal(t, "kept", string(rec.Response))
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
	b, err := OpenBadger(t.TempDir(), nil)
	require.NoError(t, err)
	s := newStore(b, mustDefaults(t, &Options{GCInterval: -1}))
	defer s.Close()
	done := make(chan struct{})
	errs := make(chan error, 1)
	go func() {
		defer close(done)
		for i := 0; i < 300; i++ {
			if _, _, err := s.Do(ctx, fmt.Sprint("k", i), nil, func(context.Context) ([]byte, error) { return []byte("x"), nil }); err != nil {
				errs <- err
				return
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

func mustDefaults(t *testing.T, o *Options) Options {
	t.Helper()
	d, err := o.withDefaults()
	require.NoError(t, err)
	return d
}
