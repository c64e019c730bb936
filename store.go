package idem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Store is an idempotency record store. It is safe for simultaneous use by
// multiple goroutines. Most callers want Do; Begin and the Lease methods are
// the steps Do is made of, for callers that need to run the request
// themselves (HTTP middleware, job runners).
type Store struct {
	b     Backend
	opts  Options
	now   func() time.Time
	log   *slog.Logger
	stats counters
	cache *recordCache // nil when Options.CacheSize is 0
	// cacheGets makes Get use the cache too, not only Begin's replays:
	// when the caller sized the cache. The embedded store's default cache serves
	// replays, the hot path of an idempotency store; filling it from every
	// Get of keys read once would cost those Gets more than it saves.
	cacheGets bool

	// mu guards closed: operations hold it for reading while they run, so
	// Close (holding it for writing) waits for them before closing the
	// backend.
	mu     sync.RWMutex
	closed bool
	// isClosed mirrors closed for the read cache's path, which answers
	// without taking mu: a cached record needs nothing that Close frees.
	isClosed atomic.Bool

	stop    chan struct{}  // closed by Close to stop background work
	wg      sync.WaitGroup // background goroutines
	keeper  keeper         // renews leases under KeepAlive
	waiters waiters        // callers of Wait
	// epoch numbers this open of an embedded data directory (0 on other
	// backends): leases granted here carry it, and an in-progress record
	// carrying an earlier one was left by a process that has ended.
	epoch uint64
}

// New returns a Store running the state machine over b, with the background
// loop started. The Store owns b: Close closes it. Passing nil options uses
// the defaults.
//
// The options that only the embedded store reads (InMemory, Sync,
// SyncInterval, DiskReserve, DiscardDamagedLog) are refused: another
// backend has durability settings of its own.
func New(b Backend, opts *Options) (*Store, error) {
	if b == nil {
		return nil, errors.New("idem: New: nil backend")
	}
	if opts != nil {
		for _, f := range []struct {
			name string
			set  bool
		}{
			{"InMemory", opts.InMemory},
			{"Sync", opts.Sync != SyncAlways},
			{"SyncInterval", opts.SyncInterval != 0},
			{"DiskReserve", opts.DiskReserve != 0},
			{"DiscardDamagedLog", opts.DiscardDamagedLog},
		} {
			if f.set {
				return nil, fmt.Errorf("idem: New: Options.%s applies to the embedded store (Open) only; this backend has durability settings of its own", f.name)
			}
		}
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if c, ok := b.(Checker); ok {
		if err := c.Check(); err != nil {
			return nil, fmt.Errorf("idem: New: %w", err)
		}
	}
	return newStore(b, o), nil
}

func newStore(b Backend, o Options) *Store {
	s := &Store{
		b:    b,
		opts: o,
		now:  o.Now,
		log:  o.Logger,
		stop: make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if e, ok := b.(interface{ Epoch() uint64 }); ok {
		s.epoch = e.Epoch()
	}
	s.keeper.init(s.log.Warn)
	if o.CacheSize > 0 {
		s.cache = newRecordCache(o.CacheSize, o.CacheTTL)
		s.cacheGets = !o.defaultCache
	}
	if o.GCInterval > 0 && !o.ReadOnly {
		s.wg.Add(1)
		go s.gcLoop()
	}
	return s
}

// DiskUsage returns the bytes of disk the store's files occupy: 0 for an
// embedded store in memory, and -1 when the backend keeps no files on this
// machine (Redis, Postgres).
func (s *Store) DiskUsage() int64 {
	if du, ok := s.b.(DiskUser); ok {
		return du.DiskUsage()
	}
	return -1
}

// Options returns the options s runs with, defaults filled in.
func (s *Store) Options() Options { return s.opts }

// Close stops the background work, waits for running operations to return
// and closes the backend. Calls after the first return nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.isClosed.Store(true)
	close(s.stop)
	s.mu.Unlock()
	s.keeper.close()
	s.wg.Wait()
	if s.cache != nil {
		s.cache.close()
	}
	if err := s.b.Close(); err != nil {
		return fmt.Errorf("idem: close: %w", err)
	}
	return nil
}

// enter starts an operation: it fails with ErrClosed after Close, and
// otherwise keeps Close waiting until the matching s.mu.RUnlock.
func (s *Store) enter() error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

// enterWrite is enter for an operation that writes: it fails with
// ErrReadOnly on a store opened read-only.
func (s *Store) enterWrite() error {
	if s.opts.ReadOnly {
		return ErrReadOnly
	}
	return s.enter()
}

// check validates the key and the context before an operation.
func (s *Store) check(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.validKey(key)
}

func (s *Store) validKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	case len(key) > s.opts.MaxKeySize:
		return fmt.Errorf("%w: %d bytes, longer than the maximum %d", ErrInvalidKey, len(key), s.opts.MaxKeySize)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalidKey)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c == 0x7f {
			return fmt.Errorf("%w: control character 0x%02x at byte %d", ErrInvalidKey, c, i)
		}
	}
	return nil
}

// wrap names the operation and the key in err: `idem: get "k": cause`.
func wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	return &opError{op: op, key: key, err: err}
}

// opError is an error with the operation and key it happened to. Its
// message is built only when asked for: a miss (ErrNotFound) is an
// ordinary answer on the Get path, and formatting it there cost more than
// the lookup.
type opError struct {
	op, key string
	err     error
}

func (e *opError) Error() string {
	return "idem: " + e.op + " " + strconv.Quote(e.key) + ": " + e.err.Error()
}

func (e *opError) Unwrap() error { return e.err }

// Begin either hands the caller a lease to run the request, or reports
// what is stored:
//
//   - lease != nil: the caller must run the request and end the lease
//     (Complete, Fail or Release). rec is the new in-progress record.
//   - lease == nil, err == nil: rec is finished (completed, or failed and
//     not retryable): replay rec.Response.
//   - ErrInProgress: another lease is live; rec.LeaseUntil says when it
//     lapses (Retry-After).
//   - ErrFingerprintMismatch: the key was used before with another
//     request; rec is that record.
//
// A lease that lapsed without an outcome (its holder crashed) is taken over:
// the new lease carries a larger fencing token, and the old holder can no
// longer end it. WithTTL and WithLeaseTTL on ctx set this call's lifetimes.
func (s *Store) Begin(ctx context.Context, key string, fingerprint []byte) (*Lease, *Record, error) {
	if s.opts.Observer == nil {
		return s.begin(ctx, key, fingerprint)
	}
	start := time.Now()
	l, rec, err := s.begin(ctx, key, fingerprint)
	s.observeBegin(start, l, err)
	return l, rec, err
}

func (s *Store) begin(ctx context.Context, key string, fingerprint []byte) (*Lease, *Record, error) {
	if err := s.check(ctx, key); err != nil {
		return nil, nil, wrap("begin", key, err)
	}
	if len(fingerprint) > MaxFingerprintSize {
		return nil, nil, wrap("begin", key, fmt.Errorf("%w: fingerprint is %d bytes, more than %d", ErrTooLarge, len(fingerprint), MaxFingerprintSize))
	}
	if err := s.enterWrite(); err != nil {
		return nil, nil, wrap("begin", key, err)
	}
	defer s.mu.RUnlock()

	pol := s.opts.policyFor(ctx)
	var epoch uint64
	if s.cache != nil {
		epoch = s.cache.epoch()
		// A cached record is finished, so the state table answers with a
		// replay or a mismatch, never a lease.
		now := s.now()
		if rec := s.cache.get(key, now); rec != nil {
			s.stats.cacheHits.Add(1)
			_, _, err := s.decideBegin(key, rec, fingerprint, pol, now)
			return nil, rec, err
		}
	}

	// The first attempt assumes the key is new: one transaction claims it,
	// or returns what is stored.
	var (
		lease    *Lease  // set when the write that grants it is tried
		leased   *Record // the record that write stores
		answer   *Record // the stored record, when the answer is not a lease
		takeover bool
	)
	err := s.update(ctx, s.b, "begin", key, nil, true, false, func(cur []byte, _ bool, now time.Time) ([]byte, time.Time, error) {
		lease, leased, answer = nil, nil, nil
		var old *Record
		if cur != nil {
			var err error
			if old, err = decodeRecord(key, cur); err != nil {
				return nil, time.Time{}, wrap("begin", key, err)
			}
		}
		next, over, err := s.decideBegin(key, old, fingerprint, pol, now)
		if next == nil {
			if err == nil && s.cache != nil {
				s.cache.put(old, now, epoch) // a replay: the record is finished
			}
			answer = old
			if err == nil {
				err = errNoWrite
			}
			return nil, time.Time{}, err
		}
		if takeover = over; takeover {
			if s.holderGone(old) {
				s.log.Warn("idem: lease taken over", "key", key, "token", next.Token, "attempts", next.Attempts,
					"reason", "its holder ended with an earlier process")
			} else {
				s.log.Warn("idem: lease taken over", "key", key, "token", next.Token, "attempts", next.Attempts,
					"lapsed", now.Sub(old.LeaseUntil).String())
			}
		}
		data := encodeRecord(next)
		lease = &Lease{s: s, key: key, token: next.Token, created: next.CreatedAt, until: next.LeaseUntil, pol: pol, data: data}
		// The lease keeps its own copy: the caller gets next.
		own := *next
		own.Fingerprint = bytes.Clone(next.Fingerprint)
		lease.rec = &own
		leased = next
		return data, physicalExpiry(next.ExpiresAt, now, time.Now()), nil
	})
	if err != nil || lease == nil {
		return nil, answer, err
	}
	answer = leased
	s.stats.leases.Add(1)
	if takeover {
		s.stats.takeovers.Add(1)
	}
	return lease, answer, nil
}

// decideBegin applies the state table to the stored record old (nil when
// absent). It returns the record to write when the caller gets a lease, or
// nil and the answer (nil error for a replay).
func (s *Store) decideBegin(key string, old *Record, fp []byte, pol policy, now time.Time) (next *Record, takeover bool, err error) {
	if old == nil || old.Expired(now) {
		r := &Record{Key: key, State: StateInProgress, Fingerprint: bytes.Clone(fp), Attempts: 1, Token: firstToken(), CreatedAt: now, UpdatedAt: now}
		if r.Fingerprint == nil {
			r.Fingerprint = []byte{}
		}
		if old != nil {
			// The expired record is gone for every purpose but one: tokens
			// keep growing, so a holder of a lease on it stays fenced out.
			r.Token = max(old.Token+1, r.Token)
		}
		pol.leaseRecord(r, now)
		r.holder = s.epoch
		return r, false, nil
	}
	if !bytes.Equal(old.Fingerprint, fp) {
		s.stats.mismatches.Add(1)
		s.log.Info("idem: key reused with a different request", "key", key, "state", old.State.String())
		return nil, false, wrap("begin", key, ErrFingerprintMismatch)
	}
	switch {
	case old.State == StateInProgress && !old.LeaseLapsed(now) && !s.holderGone(old):
		s.stats.inProgress.Add(1)
		return nil, false, wrap("begin", key, ErrInProgress)
	case old.Finished():
		s.stats.replays.Add(1)
		return nil, false, nil
	}
	// A lapsed lease, or a retryable failure: a new lease on the same record.
	if old.Token >= MaxToken {
		return nil, false, wrap("begin", key, fmt.Errorf("%w: the fencing token is at its maximum %d, so no newer lease can be fenced; delete the record to use the key again", ErrTokenExhausted, old.Token))
	}
	r := *old
	r.State = StateInProgress
	r.Response = nil
	r.Retryable = false
	r.Attempts = min(r.Attempts+1, math.MaxInt32)
	r.Token++
	r.UpdatedAt = now
	r.LeaseUntil = now.Add(pol.lease)
	r.ExpiresAt = latest(latest(old.ExpiresAt, now.Add(pol.completed)), r.LeaseUntil)
	r.holder = s.epoch
	return &r, old.State == StateInProgress, nil
}

// holderGone reports whether the in-progress record r was left by a
// process that has ended: on the embedded store, its lease was granted
// under an earlier open of the data directory, and the directory lock
// admits one process at a time, so that holder is dead and its key is free
// at once instead of after its lease lapses. Fencing is unchanged: a
// takeover still gets a larger token.
func (s *Store) holderGone(r *Record) bool {
	return s.epoch != 0 && r.holder != 0 && r.holder < s.epoch
}

// MaxToken is the largest fencing token: 2^53-1, the largest integer that
// JSON numbers and Redis's Lua keep exact. A record whose token reaches it
// (only an imported one can) gets no new lease: Begin returns an error
// wrapping ErrTokenExhausted rather than let the token wrap around and a
// stale holder's token match again.
const MaxToken = 1<<53 - 1

// firstToken returns the fencing token of a new record's first lease: a
// random number below 2^52 (so that it stays exact in JSON and Lua), which
// later leases on the record increase by one. Random, not 1, because a
// deleted or released key starts a new record, and a holder of a lease on
// the old one must not find its token again; the lease also checks the
// record's CreatedAt, so both would have to collide.
func firstToken() uint64 {
	return rand.Uint64N(1<<52-1<<32) + 1
}

// Get returns the record stored under key. It returns ErrNotFound when
// there is none or it has expired.
func (s *Store) Get(ctx context.Context, key string) (*Record, error) {
	if s.opts.Observer == nil {
		return s.get(ctx, key)
	}
	start := time.Now()
	rec, err := s.get(ctx, key)
	s.observeGet(start, err)
	return rec, err
}

func (s *Store) get(ctx context.Context, key string) (*Record, error) {
	if err := s.check(ctx, key); err != nil {
		return nil, wrap("get", key, err)
	}
	now := s.now()
	if s.cacheGets {
		if s.isClosed.Load() {
			return nil, wrap("get", key, ErrClosed)
		}
		if rec := s.cache.get(key, now); rec != nil {
			s.stats.getCacheHits.Add(1) // one shared counter on the fastest path
			return rec, nil
		}
	}
	if err := s.enter(); err != nil {
		return nil, wrap("get", key, err)
	}
	defer s.mu.RUnlock()
	var epoch uint64
	if s.cacheGets {
		epoch = s.cache.epoch()
	}
	data, err := s.b.Load(ctx, key)
	if err != nil {
		return nil, wrap("get", key, err)
	}
	if data == nil {
		s.stats.misses.Add(1)
		return nil, wrap("get", key, ErrNotFound)
	}
	rec, err := decodeRecord(key, data)
	if err != nil {
		return nil, wrap("get", key, err)
	}
	if rec.Expired(now) {
		s.stats.misses.Add(1)
		return nil, wrap("get", key, ErrNotFound)
	}
	s.stats.hits.Add(1)
	if s.cacheGets && rec.Finished() {
		s.cache.put(rec, now, epoch)
	}
	return rec, nil
}

// Delete removes the record under key, whatever its state: a holder of a
// lease on it gets ErrLeaseLost when it ends the lease. Deleting an absent
// key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.check(ctx, key); err != nil {
		return wrap("delete", key, err)
	}
	if err := s.enterWrite(); err != nil {
		return wrap("delete", key, err)
	}
	defer s.mu.RUnlock()
	err := s.b.Delete(ctx, key)
	s.waiters.wake(key)
	if s.cache != nil {
		// After the deletion, not before: a reader that read the record
		// before it was deleted either put it in the cache already (and
		// del drops it) or finds the deletion count changed and does not.
		s.cache.del(key)
	}
	return wrap("delete", key, err)
}

// Scan calls fn with every stored record whose key begins with prefix, in
// the backend's order, until fn returns an error, which Scan returns.
// Expired records are skipped. A record that cannot be decoded is passed
// as nil together with its key and an error wrapping ErrCorrupt, so tools
// can report it; fn decides whether to go on. The store never holds more
// than one record in memory for a scan.
//
// Scan holds the store open while it runs, so Close waits for it. fn may
// call the store's other methods, but not while another goroutine may
// Close the store: those calls would wait behind the Close, which waits
// for Scan. Collect the keys and act on them after Scan returns instead.
func (s *Store) Scan(ctx context.Context, prefix string, fn func(key string, rec *Record, err error) error) error {
	if err := s.enter(); err != nil {
		return fmt.Errorf("idem: scan: %w", err)
	}
	defer s.mu.RUnlock()
	now := s.now()
	err := s.b.Scan(ctx, prefix, func(key string, value []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		rec, err := decodeRecord(key, bytes.Clone(value))
		if err != nil {
			return fn(key, nil, err)
		}
		if rec.Expired(now) {
			return nil
		}
		return fn(key, rec, nil)
	})
	if err != nil {
		return fmt.Errorf("idem: scan: %w", err)
	}
	return nil
}
