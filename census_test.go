package idem_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/storeinternal"
)

func TestCensus(t *testing.T) {
	clk := idemtest.NewClock()
	s := openBadger(t, &idem.Options{Now: clk.Now, LeaseTTL: time.Minute, CompletedTTL: time.Hour, GCInterval: -1})
	ctx := context.Background()
	begin := func(key string) *idem.Lease {
		l, _, err := s.Begin(ctx, key, nil)
		require.NoError(t, err)
		return l
	}
	require.NoError(t, begin("a/done").Complete(ctx, []byte("ok")))
	require.NoError(t, begin("a/failed").Fail(ctx, nil, false))
	begin("a/old") // becomes stale
	clk.Advance(2 * time.Minute)
	begin("a/running")
	short := idem.WithTTL(ctx, time.Second)
	l, _, err := s.Begin(short, "b/expiring", nil)
	require.NoError(t, err)
	require.NoError(t, l.Complete(short, nil))
	clk.Advance(2 * time.Second)
	_, ok, err := storeinternal.Backend(s).(idem.Backend).CompareAndSwap(ctx, "a/bad", nil, []byte{0xc1}, time.Now().Add(time.Hour), false)
	require.NoError(t, err)
	require.True(t, ok)

	c, err := s.Census(ctx, "", 0)
	require.NoError(t, err)
	assert.Equal(t, map[idem.State]int{idem.StateCompleted: 1, idem.StateFailed: 1, idem.StateInProgress: 2}, c.Records)
	assert.Equal(t, 4, c.Live())
	assert.Equal(t, 1, c.Expired)
	assert.Equal(t, 1, c.Corrupt)
	assert.Equal(t, 1, c.StaleLeases)
	assert.Equal(t, "a/old", c.OldestKey)
	assert.Equal(t, 2*time.Minute+2*time.Second, c.OldestInProgress)
	assert.Equal(t, 6, c.Scanned)
	assert.False(t, c.Truncated)
	assert.True(t, c.At.Equal(clk.Now()), "judged by the store's clock")

	c, err = s.Census(ctx, "b/", 0)
	require.NoError(t, err)
	assert.Equal(t, 0, c.Live())
	assert.Equal(t, 1, c.Expired)

	c, err = s.Census(ctx, "", 2)
	require.NoError(t, err)
	assert.True(t, c.Truncated)
	assert.Equal(t, 2, c.Scanned)

	require.NoError(t, s.Close())
	_, err = s.Census(ctx, "", 0)
	assert.ErrorIs(t, err, idem.ErrClosed)
}

// BenchmarkCensus measures one census of a store of completed records,
// beside its baseline: the bare backend scan it is made of.
func BenchmarkCensus(b *testing.B) {
	const n = 20000
	ctx := context.Background()
	s, err := idem.Open(b.TempDir(), &idem.Options{GCInterval: -1, Sync: idem.SyncNever})
	require.NoError(b, err)
	defer s.Close()
	for i := range n {
		l, _, err := s.Begin(ctx, fmt.Sprintf("t%d/key-%08d", i%10, i), []byte("0123456789abcdef0123456789abcdef"))
		require.NoError(b, err)
		require.NoError(b, l.Complete(ctx, make([]byte, 200)))
	}
	backend := storeinternal.Backend(s).(idem.Backend)
	b.Run(fmt.Sprintf("baseline-backend-scan/records=%d", n), func(b *testing.B) {
		for b.Loop() {
			m := 0
			require.NoError(b, backend.Scan(ctx, "", func(string, []byte) error { m++; return nil }))
			require.Equal(b, n, m)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
	})
	b.Run(fmt.Sprintf("census/records=%d", n), func(b *testing.B) {
		for b.Loop() {
			c, err := s.Census(ctx, "", 0)
			require.NoError(b, err)
			require.Equal(b, n, c.Records[idem.StateCompleted])
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
	})
}
