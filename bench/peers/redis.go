package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/redisstore"
)

// redisGetKeys is how many completed records the Get rows read, at random.
const redisGetKeys = 1000

// rawPrefix keeps the hand-written side's keys apart from the store's.
const rawPrefix = "raw:"

func redisSpecs() []spec {
	var out []spec
	for _, g := range []int{1, 16} {
		out = append(out, spec{id: fmt.Sprintf("redis-claim-%d", g), group: "redis", workers: g,
			title:   fmt.Sprintf("Redis, %d callers: redisstore Begin+Complete+Get vs SET NX / SET / GET by hand", g),
			subject: "redisstore Begin+Complete+Get", baseline: "SET NX, SET, GET (go-redis)",
			subjectG: idemRedis, baseG: rawRedis, target: 1.0, redis: true, make: redisClaimRow(g)})
	}
	for _, g := range []int{1, 16} {
		out = append(out, spec{id: fmt.Sprintf("redis-get-%d", g), group: "redis", workers: g,
			title:   fmt.Sprintf("Redis, %d callers: redisstore Get of a completed record vs a raw GET of its bytes", g),
			subject: "redisstore Get", baseline: "GET (go-redis)",
			subjectG: idemRedis, baseG: rawRedisRead, target: 1.0, redis: true, make: redisGetRow(g)})
	}
	return out
}

// redisPair opens a redisstore Store and a hand-written side on the run's
// server, each with its own go-redis client and default pool.
func redisPair(e *env) (s *idem.Store, raw *redis.Client, closeFn func() error, err error) {
	rdb, err := e.newRedisClient()
	if err != nil {
		return nil, nil, nil, err
	}
	s, err = redisstore.Open(rdb, nil)
	if err != nil {
		return nil, nil, nil, errors.Join(err, rdb.Close())
	}
	raw, err = e.newRedisClient()
	if err != nil {
		return nil, nil, nil, errors.Join(err, s.Close(), rdb.Close())
	}
	return s, raw, func() error { return errors.Join(s.Close(), rdb.Close(), raw.Close()) }, nil
}

func redisClaimRow(workers int) func(*env) (*target, *target, error) {
	return func(e *env) (*target, *target, error) {
		s, raw, closeFn, err := redisPair(e)
		if err != nil {
			return nil, nil, err
		}
		ctx := context.Background()
		keys := newKeyGen(workers)
		subject := &target{close: closeFn, op: func(w int) error {
			k := keys.next(w)
			l, _, err := s.Begin(ctx, k, fingerprint)
			if err != nil {
				return err
			}
			if l == nil {
				return fmt.Errorf("no lease on new key %q", k)
			}
			if err := l.Complete(ctx, response); err != nil {
				return err
			}
			rec, err := s.Get(ctx, k)
			if err == nil && (rec.State != idem.StateCompleted || !bytes.Equal(rec.Response, response)) {
				err = fmt.Errorf("key %q: got %v", k, rec.State)
			}
			return err
		}}
		inProgress, completed := handWritten()
		rawKeys := newKeyGen(workers)
		ttl := idem.DefaultCompletedTTL
		baseline := &target{op: func(w int) error {
			k := rawPrefix + rawKeys.next(w)
			ok, err := raw.SetNX(ctx, k, inProgress, ttl).Result()
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("SET NX of new key %q found it taken", k)
			}
			if err := raw.Set(ctx, k, completed, ttl).Err(); err != nil {
				return err
			}
			v, err := raw.Get(ctx, k).Bytes()
			if err == nil && len(v) != len(completed) {
				err = fmt.Errorf("key %q: got %d bytes, want %d", k, len(v), len(completed))
			}
			return err
		}}
		return subject, baseline, nil
	}
}

func redisGetRow(workers int) func(*env) (*target, *target, error) {
	return func(e *env) (*target, *target, error) {
		s, raw, closeFn, err := redisPair(e)
		if err != nil {
			return nil, nil, err
		}
		ctx := context.Background()
		gen := newKeyGen(1)
		keys := make([]string, redisGetKeys)
		for i := range keys {
			keys[i] = gen.next(0)
			if _, _, err := s.Do(ctx, keys[i], fingerprint, func(context.Context) ([]byte, error) { return response, nil }); err != nil {
				return nil, nil, errors.Join(err, closeFn())
			}
		}
		// The hand-written side reads the very bytes the store wrote.
		prefix := redisstore.DefaultPrefix
		srs, brs := rngs(workers), rngs(workers)
		subject := &target{close: closeFn, op: func(w int) error {
			rec, err := s.Get(ctx, keys[srs[w].IntN(len(keys))])
			if err == nil && rec.State != idem.StateCompleted {
				err = fmt.Errorf("key %q: %v", rec.Key, rec.State)
			}
			return err
		}}
		baseline := &target{op: func(w int) error {
			k := prefix + keys[brs[w].IntN(len(keys))]
			v, err := raw.Get(ctx, k).Bytes()
			if err == nil && len(v) == 0 {
				err = fmt.Errorf("key %q: empty", k)
			}
			return err
		}}
		return subject, baseline, nil
	}
}
