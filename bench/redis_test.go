//go:build unix

package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/idemdb/idem/internal/redistest"
)

// benchRedis starts a redis-server for b (skipping without one, unless
// IDEM_REQUIRE_REDIS=1) and opens the Redis-backed store on it.
func benchRedis(b *testing.B) *redisSide {
	srv := redistest.Start(b)
	rs, err := openRedisSide(srv.Addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := rs.close(); err != nil {
			b.Error(err)
		}
	})
	return rs
}

// BenchmarkRedisGet reads the same completed records from the embedded
// store (store=embedded) and from the Redis backend (store=redis) on a
// redis-server over loopback; the target is embedded ≥ 5× Redis.
func BenchmarkRedisGet(b *testing.B) {
	n := size(redisRecords)
	rs := benchRedis(b)
	fx := benchFixture(b, n)
	if err := rs.load(context.Background(), fx.keys, 24*time.Hour, nil); err != nil {
		b.Fatal(err)
	}
	b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
		for _, g := range redisGetWorkers {
			b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
				emb, _ := getTargets(fx, fx.store, fx.keys, g)
				red, _ := getTargets(fx, rs.store, fx.keys, g)
				pairNamed(b, g, "store=embedded", "store=redis", emb, red)
			})
		}
	})
}

// BenchmarkRedisBegin claims fresh keys on a new embedded store and on the
// Redis backend (informational: no target).
func BenchmarkRedisBegin(b *testing.B) {
	rs := benchRedis(b)
	b.Run(fmt.Sprintf("goroutines=%d", redisBeginWorkers), func(b *testing.B) {
		pairNamed(b, redisBeginWorkers, "store=embedded", "store=redis", embeddedBegin(benchEnv(b, 0)), redisBegin(rs))
	})
}
