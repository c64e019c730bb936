//go:build unix

package redisstore_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/redistest"
	"github.com/idemdb/idem/redisstore"
)

// benchStores opens the two backends compared by the benchmarks: the
// embedded Badger store on disk and the Redis store on a redis-server over
// loopback, both with default options (no read cache) and no background
// expiry.
func benchStores(b *testing.B) []struct {
	name string
	s    *idem.Store
} {
	b.Helper()
	opts := &idem.Options{GCInterval: -1}
	badger, err := idem.Open(b.TempDir(), opts)
	require.NoError(b, err)
	b.Cleanup(func() { _ = badger.Close() })
	srv := redistest.Start(b)
	red, err := redisstore.Open(newClient(b, srv.Addr), opts)
	require.NoError(b, err)
	b.Cleanup(func() { _ = red.Close() })
	return []struct {
		name string
		s    *idem.Store
	}{{"backend=badger", badger}, {"backend=redis", red}}
}

// BenchmarkGet reads completed records by key, one caller at a time; the
// last sub-benchmark has the read cache (Options.CacheSize) in front of
// Redis.
func BenchmarkGet(b *testing.B) {
	ctx := context.Background()
	const records = 1000
	keys := make([]string, records)
	for i := range keys {
		keys[i] = fmt.Sprintf("get-%d", i)
	}
	stores := benchStores(b)
	srv := redistest.Start(b)
	cached, err := redisstore.Open(newClient(b, srv.Addr), &idem.Options{GCInterval: -1, CacheSize: 16 << 20})
	require.NoError(b, err)
	b.Cleanup(func() { _ = cached.Close() })
	stores = append(stores, struct {
		name string
		s    *idem.Store
	}{"backend=redis-cached", cached})
	for _, bs := range stores {
		for _, k := range keys {
			l, _, err := bs.s.Begin(ctx, k, fp)
			require.NoError(b, err)
			require.NoError(b, l.Complete(ctx, []byte(`{"status":201,"id":"ord_123"}`)))
		}
		b.Run(bs.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := bs.s.Get(ctx, keys[i%records]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

var beginKeys atomic.Int64

// BenchmarkBegin claims new keys, one caller at a time.
func BenchmarkBegin(b *testing.B) {
	ctx := context.Background()
	for _, bs := range benchStores(b) {
		b.Run(bs.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				// Keys are new across -count repetitions too, which reuse
				// the stores.
				key := fmt.Sprintf("begin-%d", beginKeys.Add(1))
				l, _, err := bs.s.Begin(ctx, key, fp)
				if err != nil || l == nil {
					b.Fatalf("no lease on %s: %v", key, err)
				}
			}
		})
	}
}
