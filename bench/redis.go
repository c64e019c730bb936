//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/redistest"
	"github.com/idemdb/idem/internal/storeinternal"
	"github.com/idemdb/idem/redisstore"
)

func init() {
	register(workload{"redis", "embedded Get (and Begin) vs the Redis backend's, on a redis-server over loopback", redisRows})
}

// redisRecords is the size of the Redis data set (fewer than the main
// one, to keep the load short; Get on the embedded side reads the same
// records).
const redisRecords = 100_000

// redisGetWorkers are the concurrencies of the Get comparison: one caller
// shows the latency ratio; with more, both sides' throughput is bounded by
// the CPU they spend per Get (redis-server shares the machine's cores).
var redisGetWorkers = []int{1, 2, 16}

// redisBeginWorkers is the concurrency of the Begin comparison.
const redisBeginWorkers = 16

// redisGoal is what embedded Get must reach against the Redis backend's.
var redisGoal = &goal{">=", 5, "x"}

// redisSide is a Redis-backed store on one server, with the client under
// it, both with their default options (no read cache) and no background
// expiry.
type redisSide struct {
	rdb     *redis.Client
	store   *idem.Store
	prefix  string
	version string // redis-server's version
}

func openRedisSide(addr string) (*redisSide, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	s, err := redisstore.Open(rdb, &idem.Options{GCInterval: -1})
	if err != nil {
		return nil, errors.Join(err, rdb.Close())
	}
	r := &redisSide{rdb: rdb, store: s, prefix: storeinternal.Backend(s).(*redisstore.Backend).Prefix()}
	if info, err := redistest.Command(addr, "INFO", "server"); err == nil {
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				r.version = v
			}
		}
	}
	return r, nil
}

func (r *redisSide) close() error { return errors.Join(r.store.Close(), r.rdb.Close()) }

// load writes the completed record of each key, encoded as the store
// encodes it, under the store's prefix with pipelined SETs of a thousand,
// and checks that the store finds what was written.
func (r *redisSide) load(ctx context.Context, keys []string, ttl time.Duration, bar *bar) error {
	now := time.Now()
	const batch = 1000
	for i := 0; i < len(keys); i += batch {
		p := r.rdb.Pipeline()
		for _, k := range keys[i:min(i+batch, len(keys))] {
			p.Set(ctx, r.prefix+k, completedRecord(k, now, ttl), ttl)
		}
		if _, err := p.Exec(ctx); err != nil {
			return fmt.Errorf("loading Redis: %w", err)
		}
		bar.set(i)
	}
	bar.done()
	last := keys[len(keys)-1]
	if _, err := r.store.Get(ctx, last); err != nil {
		return fmt.Errorf("record written under Redis key %q is not found by the store (did the key layout change?): %w", r.prefix+last, err)
	}
	return nil
}

// redisBegin is Begin on fresh keys of the Redis-backed store.
func redisBegin(r *redisSide) func() (*target, error) {
	return func() (*target, error) { return &target{op: beginOp(r.store)}, nil }
}

func redisGetOp(n, g int) string {
	return fmt.Sprintf("Get completed, embedded vs Redis, %s records, goroutines=%d", count(n), g)
}

func redisBeginOp() string {
	return fmt.Sprintf("Begin fresh key, embedded vs Redis, goroutines=%d", redisBeginWorkers)
}

// redisRows compares embedded Get with the Redis backend's on the same
// records (the figure is embedded ops/s over Redis ops/s), and Begin on
// fresh keys, for information. Without redis-server on PATH the rows are
// skipped, unless IDEM_REQUIRE_REDIS=1 makes that an error.
func redisRows(ctx context.Context, e *env) ([]row, error) {
	n := min(redisRecords, e.records)
	dir, err := e.tempDir("redis")
	if err != nil {
		return nil, err
	}
	srv, err := redistest.StartServer(dir)
	if errors.Is(err, redistest.ErrNotInstalled) && !redistest.Required() {
		var rows []row
		for _, g := range redisGetWorkers {
			rows = append(rows, row{Workload: "redis", Operation: redisGetOp(n, g), Unit: "x", Goal: redisGoal, Skipped: err.Error()})
		}
		return append(rows, row{Workload: "redis", Operation: redisBeginOp(), Unit: "x", Skipped: err.Error()}), nil
	}
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	rs, err := openRedisSide(srv.Addr)
	if err != nil {
		return nil, err
	}
	defer rs.close()
	fx, err := e.fx.get(n)
	if err != nil {
		return nil, err
	}
	if err := rs.load(ctx, fx.keys, 24*time.Hour, newBar(e.progress, fmt.Sprintf("loading %s records into Redis", count(n)), n)); err != nil {
		return nil, err
	}
	note := fmt.Sprintf("redis-server %s on loopback, go-redis default pool; %s records loaded with pipelined SETs", rs.version, count(n))
	var rows []row
	for _, g := range redisGetWorkers {
		emb, _ := getTargets(fx, fx.store, fx.keys, g)
		red, _ := getTargets(fx, rs.store, fx.keys, g)
		r, err := compare(e, "redis", redisGetOp(n, g), g, redisGoal, emb, red)
		if err != nil {
			return rows, err
		}
		r.Note = fmt.Sprintf("%s; p50 Redis/embedded %.1fx", note, float64(r.Baseline.P50)/float64(r.Subject.P50))
		rows = append(rows, r)
	}
	r, err := compare(e, "redis", redisBeginOp(), redisBeginWorkers, nil, embeddedBegin(e), redisBegin(rs))
	r.Note = "informational; " + note
	return append(rows, r), err
}
