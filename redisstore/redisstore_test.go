//go:build unix

package redisstore_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/redistest"
	"github.com/idemdb/idem/redisstore"
)

// quiet drops go-redis's log lines (failed dials in the failure tests).
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	redis.SetLogger(quiet{})
	goleak.VerifyTestMain(m)
}

var prefixes atomic.Int64

// uniquePrefix returns a key prefix no other store in this test binary
// uses, so that stores sharing one server start empty.
func uniquePrefix() string {
	return fmt.Sprintf("idemtest-%d:", prefixes.Add(1))
}

// newClient returns a client on addr, closed when t ends. Context
// deadlines apply to its socket reads and writes.
func newClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// storeOn opens a store on rdb under a fresh prefix with cfg (its Prefix is
// replaced), closed when t ends (before rdb, whose cleanup ran earlier).
func storeOn(t testing.TB, rdb redis.UniversalClient, cfg *redisstore.Config, opts *idem.Options) *idem.Store {
	t.Helper()
	var c redisstore.Config
	if cfg != nil {
		c = *cfg
	}
	c.Prefix = uniquePrefix()
	s, err := idem.New(redisstore.NewBackend(rdb, &c), opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// opener opens each store of the suite on its own client to addr.
func opener(addr string, mod func(*idem.Options)) idemtest.Opener {
	return func(t *testing.T, opts *idem.Options) *idem.Store {
		if mod != nil {
			mod(opts)
		}
		return storeOn(t, newClient(t, addr), nil, opts)
	}
}

func TestConformanceRedis(t *testing.T) {
	srv := redistest.Start(t)
	idemtest.Run(t, opener(srv.Addr, nil))
}

// TestConformanceRedisCached runs the whole suite with the read cache in
// front of Redis: the cache must not change a single answer.
func TestConformanceRedisCached(t *testing.T) {
	srv := redistest.Start(t)
	idemtest.Run(t, opener(srv.Addr, func(o *idem.Options) {
		if o.CacheSize == 0 {
			o.CacheSize = 1 << 20
		}
	}))
}

// TestConformanceRedisCluster runs the suite on a three-master Redis
// Cluster through a ClusterClient: every record is one key, so every
// script touches one slot, and Scan visits every master.
func TestConformanceRedisCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	c := redistest.StartCluster(t)
	idemtest.Run(t, func(t *testing.T, opts *idem.Options) *idem.Store {
		rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs, ContextTimeoutEnabled: true})
		t.Cleanup(func() { _ = rdb.Close() })
		return storeOn(t, rdb, nil, opts)
	})
}

// TestConformanceRedisRing runs the suite on a go-redis Ring of two
// servers: each record lives on the shard its key hashes to, and Scan
// visits both.
func TestConformanceRedisRing(t *testing.T) {
	a, b := redistest.Start(t), redistest.Start(t)
	idemtest.Run(t, func(t *testing.T, opts *idem.Options) *idem.Store {
		rdb := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": a.Addr, "b": b.Addr}})
		t.Cleanup(func() { _ = rdb.Close() })
		return storeOn(t, rdb, nil, opts)
	})
}

// TestConformanceRedisScriptClaims runs the suite with new keys claimed by
// the script, as on a Redis before 7.0, where SET NX GET is refused.
func TestConformanceRedisScriptClaims(t *testing.T) {
	srv := redistest.Start(t)
	idemtest.Run(t, func(t *testing.T, opts *idem.Options) *idem.Store {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
		t.Cleanup(func() { _ = rdb.Close() })
		b := redisstore.NewBackend(rdb, &redisstore.Config{Prefix: uniquePrefix()})
		redisstore.ClaimWithScript(b)
		s, err := idem.New(b, opts)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, s.Close()) })
		return s
	})
}
