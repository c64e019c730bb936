//go:build unix

package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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

// failoverDeadline bounds every wait for Redis to fail over or for the
// client to follow it: generous, for a loaded machine. The waits poll and
// end as soon as the condition holds.
const failoverDeadline = 30 * time.Second

// callTimeout bounds each call made while a failover may be under way, so
// that a call to a dead server ends and the next poll can start.
const callTimeout = 2 * time.Second

// assertFailoverError checks an error from a call made while Redis fails
// over: it says "redis", and errors.Is or errors.As reaches a network
// error, a deadline or an error reply from Redis (READONLY, CLUSTERDOWN).
// ErrNotReplicated is allowed when notReplicated is set: a promoted master
// has no replica until the rest are pointed at it.
func assertFailoverError(t *testing.T, err error, notReplicated bool, what string) bool {
	t.Helper()
	if !assert.Error(t, err, what) {
		return false
	}
	var netErr net.Error
	var redisErr redis.Error
	ok := errors.As(err, &netErr) || errors.As(err, &redisErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(notReplicated && errors.Is(err, redisstore.ErrNotReplicated))
	return assert.True(t, ok, "%s: the error does not reach a network or Redis cause: %v", what, err) &&
		assert.Contains(t, err.Error(), "redis", what)
}

// failoverFixture is what both failover tests share: a store with
// WaitReplicas 1 on a client that follows failovers, records completed
// before the failover, and one key claimed and still in its lease.
type failoverFixture struct {
	s *idem.Store
	// other is a second instance on the same records, whose client does
	// not resend failed commands (MaxRetries -1), so that its calls fail
	// while no master answers rather than wait in go-redis's retries.
	other *idem.Store
	want  map[string]string // completed key -> its response
	held  *idem.Lease       // claim on "held", never lapsing (the clock stands still)
}

// open opens the fixture's two instances, each on its own client from
// newClient, with WaitReplicas 1 and a clock that stands still: the held
// lease never lapses.
func (f *failoverFixture) open(t *testing.T, newClient func(maxRetries int) redis.UniversalClient) {
	cfg := &redisstore.Config{Prefix: uniquePrefix(), WaitReplicas: 1, WaitTimeout: 2 * time.Second}
	clk := idemtest.NewClock()
	for _, s := range []**idem.Store{&f.s, &f.other} {
		maxRetries := 0 // go-redis's default, 3
		if s == &f.other {
			maxRetries = -1
		}
		rdb := newClient(maxRetries)
		t.Cleanup(func() { _ = rdb.Close() })
		var err error
		*s, err = idem.New(redisstore.NewBackend(rdb, cfg), &idem.Options{GCInterval: -1, Now: clk.Now})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, (*s).Close()) })
	}
}

// completeRecords completes n keys from several goroutines, each Complete
// acknowledged by a replica, then claims "held" and completes "fence"
// after it. WAIT for fence covers the held claim on the same master:
// replication is one ordered stream, so a replica that has fence has the
// claim, and the promoted replica is the one with the most data.
func (f *failoverFixture) completeRecords(t *testing.T, keys []string, held, fence string) {
	ctx := context.Background()
	f.want = map[string]string{}
	var mu sync.Mutex // protects f.want
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := g; i < len(keys); i += 4 {
				l, _, err := f.s.Begin(ctx, keys[i], fp)
				if !assert.NoError(t, err) || !assert.NotNil(t, l) {
					return
				}
				resp := "receipt " + keys[i]
				if !assert.NoError(t, l.Complete(ctx, []byte(resp)), "acknowledged by a replica") {
					return
				}
				mu.Lock()
				f.want[keys[i]] = resp
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.Len(t, f.want, len(keys))
	l, _, err := f.s.Begin(ctx, held, fp)
	require.NoError(t, err)
	require.NotNil(t, l)
	f.held = l
	lf, _, err := f.s.Begin(ctx, fence, fp)
	require.NoError(t, err)
	require.NoError(t, lf.Complete(ctx, []byte("receipt "+fence)))
	f.want[fence] = "receipt " + fence
}

// hammer asks the other instance for the completed keys and the held key
// from several goroutines, as retries of those requests would
// during the failover. No call may get a lease: a completed key answers
// with its response or an error, the held key with idem.ErrInProgress or
// an error. The returned wait stops them and returns how many calls
// failed; it runs at the latest when t ends, before the store closes.
func (f *failoverFixture) hammer(t *testing.T, heldKey string) (wait func() (errs int64)) {
	stop := make(chan struct{})
	keys := make([]string, 0, len(f.want))
	for k := range f.want {
		keys = append(keys, k)
	}
	var failed atomic.Int64
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := g; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := heldKey
				if i%2 == 0 {
					key = keys[i%len(keys)]
				}
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				l, rec, err := f.other.Begin(ctx, key, fp)
				cancel()
				if !assert.Nil(t, l, "%s: a second lease during the failover", key) {
					return
				}
				switch {
				case err == nil && key != heldKey:
					assert.Equal(t, f.want[key], string(rec.Response), key)
				case key == heldKey && errors.Is(err, idem.ErrInProgress):
				default:
					failed.Add(1)
					if !assertFailoverError(t, err, false, "begin "+key) {
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	var once sync.Once
	wait = func() int64 {
		once.Do(func() { close(stop) })
		wg.Wait()
		return failed.Load()
	}
	t.Cleanup(func() { wait() })
	return wait
}

// check verifies the state after the failover: every completed record is
// there and replays its response without a lease, the held key is still in
// progress, its holder completes it, and a retry replays that.
func (f *failoverFixture) check(t *testing.T, heldKey string) {
	ctx := context.Background()
	for key, resp := range f.want {
		l, rec, err := f.s.Begin(ctx, key, fp)
		require.NoError(t, err, key)
		require.Nil(t, l, "%s: completed before the failover, leased again after it", key)
		require.Equal(t, idem.StateCompleted, rec.State, key)
		require.Equal(t, resp, string(rec.Response), key)
	}
	l, rec, err := f.s.Begin(ctx, heldKey, fp)
	require.ErrorIs(t, err, idem.ErrInProgress, "the claim made before the failover still holds the key")
	require.Nil(t, l)
	assert.Equal(t, f.held.Token(), rec.Token)
	require.NoError(t, f.held.Complete(ctx, []byte("after failover")), "the holder from before the failover completes")
	_, rec, err = f.s.Begin(ctx, heldKey, fp)
	require.NoError(t, err)
	assert.Equal(t, "after failover", string(rec.Response))
}

// probe runs Begin and Complete on fresh keys from next until both
// succeed, checking each failure, within failoverDeadline. It returns how
// many attempts failed.
func probe(t *testing.T, s *idem.Store, next func() string) int {
	t.Helper()
	deadline := time.Now().Add(failoverDeadline)
	for failed := 0; ; failed++ {
		key := next()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		l, _, err := s.Begin(ctx, key, fp)
		if err == nil {
			require.NotNil(t, l, "%s: never claimed before", key)
			err = l.Complete(ctx, []byte("probe"))
		}
		cancel()
		if err == nil {
			return failed
		}
		assertFailoverError(t, err, true, "probe "+key)
		require.True(t, time.Now().Before(deadline), "the store does not work again within %v: %v", failoverDeadline, err)
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSentinelFailover kills the master of a Sentinel-managed master with
// two replicas, with a store on a Sentinel failover client and
// WaitReplicas 1. While Sentinel fails over, calls fail with errors that
// reach a network or Redis cause and no key gets a second lease; once the
// client follows the promoted replica, every record completed before the
// kill replays its response, the key claimed before it is still held by
// its lease, and new requests complete (WAIT is answered by the other
// replica, which Sentinel points at the new master).
func TestSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a Sentinel failover")
	}
	const name = "idem-failover"
	master := redistest.Start(t)
	replicas := []*redistest.Server{master.StartReplica(), master.StartReplica()}
	sentinel := redistest.StartSentinel(t, master, name,
		"sentinel down-after-milliseconds "+name+" 500",
		"sentinel failover-timeout "+name+" 2000")
	// Sentinel learns of the replicas from the master's INFO; it can
	// promote only a replica it knows.
	require.Eventually(t, func() bool {
		reply, err := redistest.Command(sentinel.Addr, "SENTINEL", "MASTER", name)
		return err == nil && strings.Contains(reply, " num-slaves 2 ")
	}, failoverDeadline, 20*time.Millisecond, "sentinel does not see both replicas")

	f := &failoverFixture{}
	f.open(t, func(maxRetries int) redis.UniversalClient {
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:            name,
			SentinelAddrs:         []string{sentinel.Addr},
			DialTimeout:           time.Second,
			MaxRetries:            maxRetries,
			ContextTimeoutEnabled: true,
		})
	})
	keys := make([]string, 40)
	for i := range keys {
		keys[i] = fmt.Sprintf("order-%d", i)
	}
	f.completeRecords(t, keys, "held", "fence")

	wait := f.hammer(t, "held")
	master.Stop()
	n := 0
	failed := probe(t, f.s, func() string { n++; return fmt.Sprintf("new-%d", n) })
	hammerFailed := wait()
	t.Logf("failed calls during the failover: %d probes, %d retries", failed, hammerFailed)
	assert.Positive(t, failed+int(hammerFailed), "calls failed while the master was down")

	addr, err := redistest.Command(sentinel.Addr, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
	require.NoError(t, err)
	promoted := strings.Replace(addr, " ", ":", 1)
	assert.Contains(t, []string{replicas[0].Addr, replicas[1].Addr}, promoted, "a replica was promoted")
	f.check(t, "held")
}

// TestClusterFailover kills a master of a three-master Redis Cluster with
// one replica per master, with a store on a ClusterClient and
// WaitReplicas 1. While the cluster fails over, calls fail with errors
// that reach a network or Redis cause and no key gets a second lease.
// Once the replica is promoted, every record completed before the kill
// (some on the killed master) replays its response and the key claimed
// on the killed master is still held by its lease; Complete on the
// promoted master's keys reports ErrNotReplicated until the killed node
// returns, as its replica, and then succeeds.
func TestClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a six-node cluster and waits for a failover")
	}
	ctx := context.Background()
	c := redistest.StartClusterReplicas(t, 3, 1, "--cluster-node-timeout", "1000")
	f := &failoverFixture{}
	f.open(t, func(maxRetries int) redis.UniversalClient {
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                 c.Addrs,
			DialTimeout:           time.Second,
			MaxRetries:            maxRetries,
			ContextTimeoutEnabled: true,
			// go-redis reloads the slot map on MOVED and on this
			// interval, not when the master it knows refuses
			// connections (redis/go-redis#3979); its default is a
			// minute.
			ClusterStateReloadInterval: time.Second,
		})
	})
	b := storeinternal.Backend(f.s).(*redisstore.Backend)
	rdb, prefix := b.Client().(*redis.ClusterClient), b.Prefix()
	masterOf := func(key string) string {
		m, err := rdb.MasterForKey(ctx, prefix+key)
		require.NoError(t, err)
		return m.Options().Addr
	}

	victim := c.Node(masterOf("held"))
	require.NotNil(t, victim)
	var onVictim []string // keys of the killed master's slots, for the fence and the probes
	for i := 0; len(onVictim) < 500; i++ {
		if k := fmt.Sprintf("victim-%d", i); masterOf(k) == victim.Addr {
			onVictim = append(onVictim, k)
		}
	}
	keys := make([]string, 60)
	victimKeys := 0
	for i := range keys {
		keys[i] = fmt.Sprintf("order-%d", i)
		if masterOf(keys[i]) == victim.Addr {
			victimKeys++
		}
	}
	require.Positive(t, victimKeys, "some records live on the master that is killed")
	f.completeRecords(t, keys, "held", onVictim[0])

	wait := f.hammer(t, "held")
	victim.Stop()

	// Until the killed node returns as a replica, the promoted master has
	// none: Begin works, Complete reports ErrNotReplicated.
	deadline := time.Now().Add(failoverDeadline)
	n, failed := 0, 0
	for ; ; failed++ {
		n++
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		l, _, err := f.s.Begin(cctx, onVictim[n], fp)
		cancel()
		if err == nil {
			require.NotNil(t, l)
			err = l.Complete(ctx, []byte("unreplicated"))
			require.ErrorIs(t, err, redisstore.ErrNotReplicated, "the promoted master has no replica yet")
			rec, err := f.s.Get(ctx, onVictim[n])
			require.NoError(t, err)
			assert.Equal(t, "unreplicated", string(rec.Response), "written on the promoted master")
			break
		}
		assertFailoverError(t, err, false, "begin "+onVictim[n])
		require.True(t, time.Now().Before(deadline), "no replica promoted within %v: %v", failoverDeadline, err)
		time.Sleep(50 * time.Millisecond)
	}
	require.NotEqual(t, victim.Addr, masterOf(onVictim[0]), "the client follows the promoted replica")

	victim.Restart() // rejoins as the promoted master's replica
	failed += probe(t, f.s, func() string { n++; return onVictim[n] })
	hammerFailed := wait()
	t.Logf("failed calls during the failover: %d probes, %d retries", failed, hammerFailed)
	assert.Positive(t, failed+int(hammerFailed), "calls failed while the master was down")
	role, err := redistest.Command(victim.Addr, "ROLE")
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(role, "slave "), "the killed master returned as a replica: %s", role)
	f.check(t, "held")
}

// TestClusterSwitchoverWait hands a master's slots to its replica (CLUSTER
// FAILOVER TAKEOVER, after the replica has the claim; the old master stays
// up, as a replica) while a lease is held, and completes the lease
// afterwards with WaitReplicas 1. The client's slot map still names the
// old master, which answers MOVED: Complete follows it to the new master,
// as every call a ClusterClient routes itself does, rather than failing.
func TestClusterSwitchoverWait(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a six-node cluster")
	}
	ctx := context.Background()
	c := redistest.StartClusterReplicas(t, 3, 1)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	s := storeOn(t, rdb, &redisstore.Config{WaitReplicas: 1, WaitTimeout: 2 * time.Second}, &idem.Options{GCInterval: -1})
	prefix := storeinternal.Backend(s).(*redisstore.Backend).Prefix()
	l, _, err := s.Begin(ctx, "k", fp)
	require.NoError(t, err)
	master, err := rdb.MasterForKey(ctx, prefix+"k")
	require.NoError(t, err)
	old := master.Options().Addr

	var replica string
	for _, a := range c.Addrs {
		if info, err := redistest.Command(a, "INFO", "replication"); err == nil &&
			strings.Contains(info, "master_port:"+old[strings.LastIndex(old, ":")+1:]) {
			replica = a
		}
	}
	require.NotEmpty(t, replica, "the replica of %s", old)
	// The replica has the claim before it takes the slots over: a
	// Complete on the same master, acknowledged by WAIT, came after it.
	for i := 0; ; i++ {
		key := fmt.Sprintf("fence-%d", i)
		if m, err := rdb.MasterForKey(ctx, prefix+key); err != nil || m.Options().Addr != old {
			continue
		}
		lf, _, err := s.Begin(ctx, key, fp)
		require.NoError(t, err)
		require.NoError(t, lf.Complete(ctx, nil))
		break
	}
	_, err = redistest.Command(replica, "CLUSTER", "FAILOVER", "TAKEOVER")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		role, err := redistest.Command(old, "ROLE")
		return err == nil && strings.HasPrefix(role, "slave ")
	}, failoverDeadline, 20*time.Millisecond, "%s hands its slots to %s", old, replica)

	require.NoError(t, l.Complete(ctx, []byte("after switchover")))
	_, rec, err := s.Begin(ctx, "k", fp)
	require.NoError(t, err)
	assert.Equal(t, "after switchover", string(rec.Response))
}

// TestClaimLostInFailover shows what WaitReplicas does not cover: a claim
// (Begin) is not waited for, so when the master dies before its replica
// has the claim, the promoted replica has no record of it and a retry
// gets a new lease at once, while the first holder's lease has not
// lapsed: the request runs twice. Fencing still keeps one outcome: the
// first holder's Complete gets idem.ErrLeaseLost.
func TestClaimLostInFailover(t *testing.T) {
	ctx := context.Background()
	cfg := &redisstore.Config{Prefix: uniquePrefix(), WaitReplicas: 1, WaitTimeout: 200 * time.Millisecond}
	clk := idemtest.NewClock() // stands still: no lease lapses
	master := redistest.Start(t)
	replica := master.StartReplica()
	// Both instances' clients dial whichever server is the master, as
	// a Sentinel client would once it learns of the failover.
	var current atomic.Value // string: the master's address
	current.Store(master.Addr)
	open := func() *idem.Store {
		rdb := redis.NewClient(&redis.Options{
			ContextTimeoutEnabled: true,
			MaxRetries:            -1,
			Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, current.Load().(string))
			},
		})
		t.Cleanup(func() { _ = rdb.Close() })
		s, err := idem.New(redisstore.NewBackend(rdb, cfg), &idem.Options{GCInterval: -1, Now: clk.Now})
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	first, second := open(), open()

	// The replica loses its link to the master (here: it is pointed at
	// a server that does not exist, keeping its data) and so misses
	// the claim; the master then dies.
	_, err := redistest.Command(replica.Addr, "REPLICAOF", "127.0.0.1", "1")
	require.NoError(t, err)
	held, _, err := first.Begin(ctx, "k", fp)
	require.NoError(t, err)
	require.NotNil(t, held)
	master.Stop()
	n, err := redistest.Command(replica.Addr, "EXISTS", cfg.Prefix+"k")
	require.NoError(t, err)
	require.Equal(t, "0", n, "the replica missed the claim")
	_, err = redistest.Command(replica.Addr, "REPLICAOF", "NO", "ONE")
	require.NoError(t, err)
	current.Store(replica.Addr)

	var l *idem.Lease
	require.Eventually(t, func() bool { // until the pool drops its dead connections
		l, _, err = second.Begin(ctx, "k", fp)
		return err == nil
	}, failoverDeadline, 20*time.Millisecond)
	require.NotNil(t, l, "a second lease while the first is live: the promoted replica has no record of the claim")
	err = l.Complete(ctx, []byte("second run"))
	require.ErrorIs(t, err, redisstore.ErrNotReplicated, "the promoted master has no replica")

	require.Eventually(t, func() bool {
		err = held.Complete(ctx, []byte("first run"))
		return !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, io.EOF)
	}, failoverDeadline, 20*time.Millisecond)
	require.ErrorIs(t, err, idem.ErrLeaseLost, "the first holder is fenced off")
	rec, err := first.Get(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, "second run", string(rec.Response))
}
