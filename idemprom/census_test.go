package idemprom_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemprom"
)

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
	b.Run(fmt.Sprintf("baseline-backend-scan/records=%d", n), func(b *testing.B) {
		for b.Loop() {
			m := 0
			require.NoError(b, s.Backend().Scan(ctx, "", func(string, []byte) error { m++; return nil }))
			require.Equal(b, n, m)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
	})
	b.Run(fmt.Sprintf("census/records=%d", n), func(b *testing.B) {
		for b.Loop() {
			c, err := idemprom.TakeCensus(ctx, s, "", time.Now(), 0)
			require.NoError(b, err)
			require.Equal(b, n, c.Records[idem.StateCompleted])
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
	})
}
