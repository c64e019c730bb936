//go:build unix

package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/redistest"
	"github.com/idemdb/idem/internal/storeinternal"
	"github.com/idemdb/idem/redisstore"
)

func TestOpenDefaults(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := newClient(t, srv.Addr)
	s, err := redisstore.Open(rdb, nil)
	require.NoError(t, err)
	_, _, err = s.Do(ctx, "order-1", fp, func(context.Context) ([]byte, error) { return []byte("ok"), nil })
	require.NoError(t, err)
	n, err := rdb.Exists(ctx, "idem:order-1").Result()
	require.NoError(t, err)
	assert.Equal(t, int64(1), n, "the record is the one key idem:order-1")
	b, ok := storeinternal.Backend(s).(*redisstore.Backend)
	require.True(t, ok)
	assert.Equal(t, redisstore.DefaultPrefix, b.Prefix())

	require.NoError(t, s.Close())
	require.NoError(t, rdb.Ping(ctx).Err(), "closing the store leaves the caller's client open")

	_, err = redisstore.Open(nil, nil)
	assert.ErrorContains(t, err, "nil redis client")
	_, err = redisstore.Open(rdb, &idem.Options{LeaseTTL: -time.Second})
	assert.ErrorContains(t, err, "LeaseTTL")
	_, err = idem.New(redisstore.NewBackend(rdb, &redisstore.Config{Prefix: "idem\xff:"}), nil)
	assert.ErrorContains(t, err, "not valid UTF-8", "a prefix Scan could never match is refused when the store opens")
	_, err = redisstore.Open(rdb, &idem.Options{Sync: idem.SyncNever})
	assert.ErrorContains(t, err, "Options.Sync", "Redis has durability settings of its own")
}

// TestPrefixes: two stores on one Redis under different prefixes do not
// see each other's keys, even when a prefix holds SCAN's glob characters.
func TestPrefixes(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := newClient(t, srv.Addr)
	open := func(prefix string) *idem.Store {
		s, err := idem.New(redisstore.NewBackend(rdb, &redisstore.Config{Prefix: prefix}), &idem.Options{GCInterval: -1})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	glob, plain, other := open("a*:"), open("ab:"), open("a?:")
	for _, s := range []*idem.Store{glob, plain, other} {
		for _, k := range []string{"x1", "x2", "y[1]"} {
			_, _, err := s.Do(ctx, k, fp, func(context.Context) ([]byte, error) { return nil, nil })
			require.NoError(t, err)
		}
	}
	keys := func(s *idem.Store, prefix string) []string {
		var got []string
		require.NoError(t, s.Scan(ctx, prefix, func(key string, rec *idem.Record, err error) error {
			require.NoError(t, err)
			got = append(got, key)
			return nil
		}))
		return got
	}
	assert.ElementsMatch(t, []string{"x1", "x2", "y[1]"}, keys(glob, ""))
	assert.ElementsMatch(t, []string{"x1", "x2", "y[1]"}, keys(other, ""))
	assert.ElementsMatch(t, []string{"x1", "x2"}, keys(plain, "x"))
	assert.ElementsMatch(t, []string{"y[1]"}, keys(plain, "y["))
	require.NoError(t, glob.Delete(ctx, "x1"))
	_, err := plain.Get(ctx, "x1")
	assert.NoError(t, err, "deleting under one prefix leaves the other")
}

// TestScanManyKeys scans more keys than one SCAN batch returns.
func TestScanManyKeys(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	s := storeOn(t, newClient(t, srv.Addr), nil, &idem.Options{GCInterval: -1})
	const n = 1500
	for i := range n {
		l, _, err := s.Begin(ctx, fmt.Sprintf("k%s-%d", strings.Repeat("x", i%7), i), fp)
		require.NoError(t, err)
		require.NoError(t, l.Complete(ctx, nil))
	}
	seen := map[string]bool{}
	require.NoError(t, s.Scan(ctx, "", func(key string, rec *idem.Record, err error) error {
		require.NoError(t, err)
		seen[key] = true
		return nil
	}))
	assert.Len(t, seen, n)
	rep, err := s.CollectGarbage(ctx)
	require.NoError(t, err)
	assert.Equal(t, n, rep.Records)
}

// TestRedisExpiry: the Redis key expires with the record's lifetime (by
// the real clock, rounded up to whole seconds and never earlier), whatever
// the store's clock reads.
func TestRedisExpiry(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := newClient(t, srv.Addr)
	b := redisstore.NewBackend(rdb, &redisstore.Config{Prefix: uniquePrefix()})
	clk := idemtest.NewClock() // far from the real time on purpose
	s, err := idem.New(b, &idem.Options{GCInterval: -1, Now: clk.Now, LeaseTTL: time.Minute, CompletedTTL: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })

	pttl := func(key string) time.Duration {
		d, err := rdb.PTTL(ctx, b.Prefix()+key).Result()
		require.NoError(t, err)
		return d
	}
	l, _, err := s.Begin(ctx, "k", fp)
	require.NoError(t, err)
	d := pttl("k")
	assert.True(t, d >= time.Hour-time.Second && d <= time.Hour+3*time.Second, "in progress: the record's TTL, not the lease's: %v", d)
	clk.Advance(10 * time.Minute)
	require.NoError(t, l.Complete(idem.WithTTL(ctx, 2*time.Hour), []byte("x")))
	d = pttl("k")
	assert.True(t, d >= 2*time.Hour-time.Second && d <= 2*time.Hour+3*time.Second, "completed with WithTTL 2h: %v", d)

	// Released: the key is gone from Redis at once.
	l2, _, err := s.Begin(ctx, "r", fp)
	require.NoError(t, err)
	require.NoError(t, l2.Release(ctx))
	n, err := rdb.Exists(ctx, b.Prefix()+"r").Result()
	require.NoError(t, err)
	assert.Zero(t, n)
}

// TestScriptCacheFlushed: the transitions keep working after Redis lost
// its script cache (SCRIPT FLUSH, as after a restart or failover), with
// and without WAIT.
func TestScriptCacheFlushed(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	srv.StartReplica()
	rdb := newClient(t, srv.Addr)
	for _, cfg := range []*redisstore.Config{nil, {WaitReplicas: 1}} {
		s := storeOn(t, rdb, cfg, &idem.Options{GCInterval: -1})
		for i := 0; i < 3; i++ {
			l, _, err := s.Begin(ctx, fmt.Sprintf("k%d", i), fp)
			require.NoError(t, err)
			require.NoError(t, rdb.ScriptFlush(ctx).Err())
			require.NoError(t, l.Complete(ctx, []byte("done")))
			require.NoError(t, rdb.ScriptFlush(ctx).Err())
			_, rec, err := s.Begin(ctx, fmt.Sprintf("k%d", i), fp)
			require.NoError(t, err)
			assert.Equal(t, "done", string(rec.Response))
		}
	}
}

// TestScriptTransitions: each form of the script's call (swap, create,
// delete, and absent to absent), with claims made by the script too, as
// on a Redis before 7.0: it writes only where the stored value is the
// expected one, and otherwise returns what is stored.
func TestScriptTransitions(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := newClient(t, srv.Addr)
	b := redisstore.NewBackend(rdb, &redisstore.Config{Prefix: uniquePrefix()})
	redisstore.ClaimWithScript(b)
	exp := time.Now().Add(time.Minute)
	stored := func() string {
		v, err := rdb.Get(ctx, b.Prefix()+"k").Result()
		if errors.Is(err, redis.Nil) {
			return "<absent>"
		}
		require.NoError(t, err)
		return v
	}
	for _, c := range []struct {
		old, new  string // "" is nil
		swapped   bool
		cur, left string
	}{
		{"", "", true, "", "<absent>"},
		{"a", "b", false, "", "<absent>"},
		{"a", "", false, "", "<absent>"},
		{"", "a", true, "", "a"},
		{"", "b", false, "a", "a"},
		{"", "", false, "a", "a"},
		{"x", "b", false, "a", "a"},
		{"a", "b", true, "", "b"},
		{"a", "", false, "b", "b"},
		{"b", "", true, "", "<absent>"},
	} {
		bs := func(s string) []byte {
			if s == "" {
				return nil
			}
			return []byte(s)
		}
		cur, swapped, err := b.CompareAndSwap(ctx, "k", bs(c.old), bs(c.new), exp, false)
		require.NoError(t, err)
		assert.Equal(t, c.swapped, swapped, "%q -> %q", c.old, c.new)
		assert.Equal(t, c.cur, string(cur), "%q -> %q", c.old, c.new)
		assert.Equal(t, c.left, stored(), "%q -> %q", c.old, c.new)
	}
	ttl, err := rdb.PTTL(ctx, b.Prefix()+"k").Result()
	require.NoError(t, err)
	assert.Equal(t, time.Duration(-2), ttl, "absent")
	_, swapped, err := b.CompareAndSwap(ctx, "k", nil, []byte("a"), exp, false)
	require.NoError(t, err)
	require.True(t, swapped)
	ttl, err = rdb.PTTL(ctx, b.Prefix()+"k").Result()
	require.NoError(t, err)
	assert.InDelta(t, time.Minute, ttl, float64(5*time.Second), "the Redis expiry is expireAt's")
}

// TestErrorReplies: an error reply to the claim or to the script (here a
// key of another type) is reported as the Redis error it is, after the
// command went again through go-redis's usual path, and writes nothing.
func TestErrorReplies(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := newClient(t, srv.Addr)
	b := redisstore.NewBackend(rdb, &redisstore.Config{Prefix: uniquePrefix()})
	k := b.Prefix() + "listed"
	require.NoError(t, rdb.RPush(ctx, k, "x").Err())
	exp := time.Now().Add(time.Minute)
	var sent []string
	rdb.AddHook(cmdRecorder(&sent))
	// Redis does not have the script yet: EVAL runs it and caches it.
	_, swapped, err := b.CompareAndSwap(ctx, "absent", []byte("x"), nil, exp, false)
	require.NoError(t, err)
	assert.False(t, swapped)
	assert.Equal(t, []string{"evalsha", "eval"}, sent)
	for _, c := range []struct {
		old, new []byte
		op, cmd  string
	}{
		{nil, []byte("v"), "set nx", "set"},
		{[]byte("x"), []byte("v"), "compare-and-swap", "evalsha"},
		{[]byte("x"), nil, "compare-and-swap", "evalsha"},
	} {
		sent = sent[:0]
		_, _, err := b.CompareAndSwap(ctx, "listed", c.old, c.new, exp, true)
		var rerr redis.Error
		require.ErrorAs(t, err, &rerr, "old %q new %q", c.old, c.new)
		assert.ErrorContains(t, err, "redis "+c.op)
		assert.Contains(t, err.Error(), "WRONGTYPE")
		assert.Equal(t, []string{c.cmd, c.cmd}, sent, "sent raw, then again as a go-redis command")
	}
	typ, err := rdb.Type(ctx, k).Result()
	require.NoError(t, err)
	assert.Equal(t, "list", typ)
}

// cmdRecorder is a go-redis hook that appends the name of each command
// sent to *names.
func cmdRecorder(names *[]string) redis.Hook { return recorder{names} }

type recorder struct{ names *[]string }

func (recorder) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r recorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		*r.names = append(*r.names, cmd.Name())
		return next(ctx, cmd)
	}
}

func (recorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestWaitReplicas: with WaitReplicas, Complete returns once a replica
// has the record; with the replica gone it reports ErrNotReplicated after
// WaitTimeout, and the record is still written on the master. Claims do
// not wait.
func TestWaitReplicas(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	replica := srv.StartReplica()
	rdb := newClient(t, srv.Addr)
	// Generous for a loaded machine: the replicated Complete returns as
	// soon as the replica acknowledges; only the unreplicated one waits
	// all of it.
	cfg := &redisstore.Config{WaitReplicas: 1, WaitTimeout: time.Second}
	s := storeOn(t, rdb, cfg, &idem.Options{GCInterval: -1})
	prefix := storeinternal.Backend(s).(*redisstore.Backend).Prefix()

	l, _, err := s.Begin(ctx, "paid", fp)
	require.NoError(t, err)
	require.NoError(t, l.Complete(ctx, []byte("receipt")))
	onReplica, err := redistest.Command(replica.Addr, "GET", prefix+"paid")
	require.NoError(t, err)
	assert.Contains(t, onReplica, "receipt", "Complete returned after the replica had the record")

	replica.Stop()
	time.Sleep(100 * time.Millisecond) // let the master notice the replica left
	l, _, err = s.Begin(ctx, "unreplicated", fp)
	require.NoError(t, err, "claims do not wait for replicas")
	err = l.Complete(ctx, []byte("receipt 2"))
	require.ErrorIs(t, err, redisstore.ErrNotReplicated)
	assert.Contains(t, err.Error(), `idem: complete "unreplicated"`)
	assert.Contains(t, err.Error(), "0 of 1 replicas")
	rec, err := s.Get(ctx, "unreplicated")
	require.NoError(t, err)
	assert.Equal(t, idem.StateCompleted, rec.State, "the write was made on the master")

	// On a Ring, WAIT runs on the shard that owns the key.
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": srv.Addr}})
	t.Cleanup(func() { _ = ring.Close() })
	rs := storeOn(t, ring, cfg, &idem.Options{GCInterval: -1})
	l, _, err = rs.Begin(ctx, "ring", fp)
	require.NoError(t, err)
	err = l.Complete(ctx, []byte("x"))
	require.ErrorIs(t, err, redisstore.ErrNotReplicated)
}

// TestLongestTTL: a record kept "for ever" (the longest Duration, as the
// root package's TTL tests use) gets a Redis expiry at least as long as a
// day, not one that drops it at once; a dropped claim would hand a second
// lease to a retry and run the request twice.
func TestLongestTTL(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := newClient(t, srv.Addr)
	s := storeOn(t, rdb, nil, &idem.Options{GCInterval: -1, CompletedTTL: math.MaxInt64})
	prefix := storeinternal.Backend(s).(*redisstore.Backend).Prefix()
	pttl := func(key string) time.Duration {
		// Raw milliseconds: go-redis's PTTL overflows a Duration here.
		ms, err := rdb.Do(ctx, "pttl", prefix+key).Int64()
		require.NoError(t, err)
		return time.Duration(min(ms, math.MaxInt64/int64(time.Millisecond))) * time.Millisecond
	}

	l, _, err := s.Begin(ctx, "claim", fp)
	require.NoError(t, err)
	assert.Greater(t, pttl("claim"), 24*time.Hour, "the in-progress claim keeps its Redis key")
	l2, _, err := s.Begin(ctx, "claim", fp)
	require.ErrorIs(t, err, idem.ErrInProgress)
	require.Nil(t, l2)
	require.NoError(t, l.Extend(ctx, math.MaxInt64))
	assert.Greater(t, pttl("claim"), 24*time.Hour, "extended by the longest Duration")
	require.NoError(t, l.Complete(idem.WithTTL(ctx, math.MaxInt64), []byte("charged")))
	assert.Greater(t, pttl("claim"), 24*time.Hour, "completed with WithTTL(MaxInt64)")
}

// TestWaitTimeoutBounds: with too few replicas, Complete reports
// ErrNotReplicated after about WaitTimeout, whether WaitTimeout is below a
// millisecond (WAIT's unit, where 0 means wait for ever) or longer than
// the client's ReadTimeout.
func TestWaitTimeoutBounds(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	srv.StartReplica().Stop()
	require.Eventually(t, func() bool {
		info, err := redistest.Command(srv.Addr, "INFO", "replication")
		return err == nil && strings.Contains(info, "connected_slaves:0")
	}, 5*time.Second, 20*time.Millisecond)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	for i, wait := range []time.Duration{600 * time.Millisecond, 500 * time.Microsecond} {
		s := storeOn(t, rdb, &redisstore.Config{WaitReplicas: 1, WaitTimeout: wait}, &idem.Options{GCInterval: -1})
		key := fmt.Sprintf("k%d", i)
		l, _, err := s.Begin(ctx, key, fp)
		require.NoError(t, err)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = l.Complete(cctx, []byte("receipt"))
		cancel()
		require.ErrorIs(t, err, redisstore.ErrNotReplicated, "WaitTimeout %v", wait)
		rec, err := s.Get(ctx, key)
		require.NoError(t, err)
		assert.Equal(t, idem.StateCompleted, rec.State)
	}
}
