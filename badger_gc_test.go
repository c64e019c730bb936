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
	expires := time.Now().Add(2 * time.Second)
	wb := b.DB().NewWriteBatch()
	for i := 0; i < n; i++ {
		rec := &Record{State: StateCompleted, Fingerprint: make([]byte, 32), Response: make([]byte, 150),
			Attempts: 1, Token: 1, CreatedAt: time.Now(), UpdatedAt: time.Now(), ExpiresAt: expires}
		e := badger.NewEntry(dbKey(fmt.Sprintf("%016x", rand.Uint64())), EncodeRecord(rec))
		e.ExpiresAt = uint64(expires.Unix()) + 1
		require.NoError(t, wb.SetEntry(e))
	}
	require.NoError(t, wb.Flush())
	peak := b.DiskUsage()
	t.Logf("peak disk use: %.1f MB for %d records", float64(peak)/1e6, n)

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
