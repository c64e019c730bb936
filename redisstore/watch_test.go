//go:build unix

package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/redistest"
	"github.com/idemdb/idem/redisstore"
)

// pair opens two stores, A and B, on one Redis under one prefix, each with
// its own client, polling every poll. tweak, when not nil, is applied to
// B's backend before its store opens.
func pair(t *testing.T, addr string, poll time.Duration, tweak func(*redisstore.Backend)) (a, b *idem.Store, bb *redisstore.Backend) {
	t.Helper()
	cfg := &redisstore.Config{Prefix: uniquePrefix(), SetKeyspaceEvents: true}
	opts := &idem.Options{GCInterval: -1, WaitPoll: poll}
	ab := redisstore.NewBackend(newClient(t, addr), cfg)
	bb = redisstore.NewBackend(newClient(t, addr), cfg)
	if tweak != nil {
		tweak(bb)
	}
	var err error
	a, err = idem.New(ab, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a.Close()) })
	b, err = idem.New(bb, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return a, b, bb
}

// waitOn starts a Wait for key on s and returns when it has been waiting
// for a moment; its outcome and the time it returned come on the channel.
type waited struct {
	rec *idem.Record
	err error
	at  time.Time
}

func waitOn(t *testing.T, s *idem.Store, key string) <-chan waited {
	t.Helper()
	out := make(chan waited, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rec, err := s.Wait(ctx, key)
		out <- waited{rec, err, time.Now()}
	}()
	time.Sleep(50 * time.Millisecond) // let it subscribe and read
	select {
	case w := <-out:
		t.Fatalf("Wait returned before the lease ended: %v, %v", w.rec, w.err)
	default:
	}
	return out
}

// TestWatchWakesOtherInstance: a Wait on instance B for a key whose lease
// is held on A returns right after A's Complete, although B polls only
// once an hour, so B was told by the keyspace notification. It logs the
// wake-up latencies.
func TestWatchWakesOtherInstance(t *testing.T) {
	srv := redistest.Start(t)
	a, b, _ := pair(t, srv.Addr, time.Hour, nil)
	ctx := context.Background()
	const rounds = 20
	var lat []time.Duration
	for i := range rounds {
		key := fmt.Sprintf("k%d", i)
		lease, _, err := a.Begin(ctx, key, nil)
		require.NoError(t, err)
		out := waitOn(t, b, key)
		start := time.Now()
		require.NoError(t, lease.Complete(ctx, []byte("ok")))
		select {
		case w := <-out:
			require.NoError(t, w.err)
			assert.Equal(t, idem.StateCompleted, w.rec.State)
			assert.Equal(t, []byte("ok"), w.rec.Response)
			lat = append(lat, w.at.Sub(start))
		case <-time.After(5 * time.Second):
			t.Fatal("Wait on B did not wake within 5s of A's Complete (poll is 1h)")
		}
	}
	slices.Sort(lat)
	t.Logf("wake-up after Complete on the other instance, %d rounds: min %v, median %v, max %v",
		rounds, lat[0], lat[rounds/2], lat[rounds-1])
	assert.Less(t, lat[rounds/2], 50*time.Millisecond, "median wake-up latency")

	// A release deletes the key: the waiter is told too, and finds nothing.
	lease, _, err := a.Begin(ctx, "released", nil)
	require.NoError(t, err)
	out := waitOn(t, b, "released")
	require.NoError(t, lease.Release(ctx))
	select {
	case w := <-out:
		assert.True(t, errors.Is(w.err, idem.ErrNotFound), "Wait after Release: %v", w.err)
	case <-time.After(5 * time.Second):
		t.Fatal("Wait on B did not wake within 5s of A's Release (poll is 1h)")
	}
}

// TestWatchRefusedPolls: on a Redis that refuses CONFIG (renamed away, as
// managed services do) and has no keyspace notifications, Watch reports it
// cannot watch, and Wait still returns, by polling.
func TestWatchRefusedPolls(t *testing.T) {
	srv := redistest.Start(t, "--rename-command", "CONFIG", "idemtest-hidden-config")
	a, b, bb := pair(t, srv.Addr, 20*time.Millisecond, nil)
	_, _, ok := bb.Watch(context.Background(), "x")
	assert.False(t, ok, "Watch on a Redis that refuses CONFIG")
	ctx := context.Background()
	lease, _, err := a.Begin(ctx, "k", nil)
	require.NoError(t, err)
	out := waitOn(t, b, "k")
	require.NoError(t, lease.Complete(ctx, []byte("ok")))
	select {
	case w := <-out:
		require.NoError(t, w.err)
		assert.Equal(t, idem.StateCompleted, w.rec.State)
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return by polling")
	}
}

// TestWatchDisabledPolls: the same with watching turned off in the
// backend, on a Redis that would allow it.
func TestWatchDisabledPolls(t *testing.T) {
	srv := redistest.Start(t)
	a, b, _ := pair(t, srv.Addr, 20*time.Millisecond, redisstore.DisableWatch)
	ctx := context.Background()
	lease, _, err := a.Begin(ctx, "k", nil)
	require.NoError(t, err)
	out := waitOn(t, b, "k")
	require.NoError(t, lease.Complete(ctx, []byte("ok")))
	select {
	case w := <-out:
		require.NoError(t, w.err)
		assert.Equal(t, idem.StateCompleted, w.rec.State)
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return by polling")
	}
}

// TestWatchSubscriptions: the backend subscribes to a key's channel while
// somebody watches it, once however many do, and unsubscribes when the
// last stops; it sets notify-keyspace-events on the way.
func TestWatchSubscriptions(t *testing.T) {
	srv := redistest.Start(t)
	b := redisstore.NewBackend(newClient(t, srv.Addr), &redisstore.Config{Prefix: "p:", SetKeyspaceEvents: true})
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	ctx := context.Background()
	numsub := func() string {
		t.Helper()
		r, err := redistest.Command(srv.Addr, "PUBSUB", "NUMSUB", "__keyspace@0__:p:k")
		require.NoError(t, err)
		return r
	}
	c1, stop1, ok := b.Watch(ctx, "k")
	require.True(t, ok)
	_, stop2, ok := b.Watch(ctx, "k")
	require.True(t, ok)
	assert.Equal(t, "__keyspace@0__:p:k 1", numsub())
	flags, err := redistest.Command(srv.Addr, "CONFIG", "GET", "notify-keyspace-events")
	require.NoError(t, err)
	t.Logf("notify-keyspace-events: %s", flags)

	_, err = redistest.Command(srv.Addr, "SET", "p:k", "v")
	require.NoError(t, err)
	select {
	case <-c1:
	case <-time.After(5 * time.Second):
		t.Fatal("no notification of SET")
	}
	stop1()
	stop1() // a second call does nothing
	assert.Equal(t, "__keyspace@0__:p:k 1", numsub())
	stop2()
	require.Eventually(t, func() bool { return numsub() == "__keyspace@0__:p:k 0" }, 5*time.Second, 10*time.Millisecond)
}

// Without SetKeyspaceEvents, Watch never changes the server's
// configuration: it is off where the server does not publish the events,
// and on where the server's own configuration does.
func TestWatchLeavesServerConfig(t *testing.T) {
	srv := redistest.Start(t)
	rdb := newClient(t, srv.Addr)
	ctx := context.Background()
	require.NoError(t, rdb.ConfigSet(ctx, "notify-keyspace-events", "").Err())
	b := redisstore.NewBackend(rdb, &redisstore.Config{Prefix: "p:"})
	_, _, ok := b.Watch(ctx, "k")
	assert.False(t, ok, "no events on the server: Wait polls")
	cur, err := rdb.ConfigGet(ctx, "notify-keyspace-events").Result()
	require.NoError(t, err)
	assert.Equal(t, "", cur["notify-keyspace-events"], "the server's configuration is unchanged")
	require.NoError(t, b.Close())

	require.NoError(t, rdb.ConfigSet(ctx, "notify-keyspace-events", "KA").Err())
	b = redisstore.NewBackend(rdb, &redisstore.Config{Prefix: "p:"})
	defer b.Close()
	_, stop, ok := b.Watch(ctx, "k")
	require.True(t, ok, "the server publishes the events: Watch uses them")
	stop()
}
