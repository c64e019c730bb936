package idemtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemdb/idem"
)

// SeedEnv names the environment variable that sets the seed of the
// RandomOps test: IDEMTEST_SEED=12345 go test -run 'Conformance.*/RandomOps'.
const SeedEnv = "IDEMTEST_SEED"

const (
	modelKeys    = 8 // few, so that the workers meet on keys often
	modelWorkers = 4
	modelHeld    = 6 // leases a worker keeps, stale ones included
	modelLog     = 16
)

// testRandomOps runs random operations from several goroutines over a few
// keys (Begin, the lease steps, Get, Delete, the operator repairs, Restore
// and Do), with a clock the test moves in jumps past lease lapses and
// record expiries, and checks every answer against a model of the state
// table ("plain", and "cached" with the read cache on).
//
// The model is exact because each key's operations are serialized by a
// mutex of the test (the store sees different keys at once), and the clock
// stands still while an operation runs: the workers hold clockMu for
// reading and an advance takes it for writing. So every answer, record
// and error, has one right value, computed from the key's previous
// answers. What the model does not know, the first token of a new record,
// it checks for what the contract promises (a token never handed out
// before under the key, and above the expired record's) and then adopts.
// Restore writes tokens and CreatedAt as given, so a lease is on the
// stored record while that carries its token and CreatedAt (see held);
// Do's fn counts its runs, which must match the leases Do was granted.
//
// Serialized, the backend's compare-and-swap never loses a race, so
// "racing" then runs operations on the same keys at once and checks what
// must hold in any order (see testRacing).
func testRandomOps(t *testing.T, open Opener) {
	seed := uint64(1)
	if v := os.Getenv(SeedEnv); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: not a seed: %v", SeedEnv, v, err)
		}
		seed = n
	}
	ops, rounds := 1500, 20 // ops per worker; rounds of racing
	if testing.Short() {
		ops, rounds = 300, 5
	}
	logSeed := func(t *testing.T) {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("seed %d: repeat the same operations with %s=%d (the interleaving may differ)", seed, SeedEnv, seed)
			}
		})
	}
	for _, tc := range []struct {
		name  string
		cache int64
	}{{"plain", 0}, {"cached", 1 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			logSeed(t)
			s, clk := fixture(t, open, func(o *idem.Options) { o.CacheSize = tc.cache })
			m := &model{t: t, s: s, clk: clk, seed: seed, lastAdvance: time.Now(), outcomes: map[string]int{}}
			for i := range m.keys {
				m.keys[i] = &keyModel{name: fmt.Sprintf("model-%d", i), idx: i, tokens: map[uint64]bool{}, leases: map[leaseID]bool{}}
			}
			var wg sync.WaitGroup
			for g := 0; g < modelWorkers; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					m.work(g, ops)
				}()
			}
			wg.Wait()
			t.Logf("seed %d: %d operations, clock moved %v; answers: %v", seed, m.ops.Load(), clk.Now().Sub(T0), m.outcomes)
			if !testing.Short() && !t.Failed() {
				// A mix that stopped reaching some answer would pass
				// while checking less: every kind must have come.
				for _, what := range allOutcomes {
					if m.outcomes[what] == 0 {
						t.Errorf("seed %d: no operation was answered with %q; the mix of operations needs changing", seed, what)
					}
				}
			}
		})
	}
	t.Run("racing", func(t *testing.T) {
		logSeed(t)
		testRacing(t, open, seed, rounds)
	})
}

// allOutcomes are the kinds of answer a run must have reached.
var allOutcomes = []string{
	"begin: new record", "begin: new record over an expired one",
	"begin: takeover of a lapsed lease", "begin: retry of a retryable failure",
	"begin: replay", "begin: in progress", "begin: fingerprint mismatch",
	"complete: applied", "complete: lease lost", "fail: applied", "fail: lease lost",
	"extend: applied", "extend: lease lost", "release: applied", "release: lease lost",
	"force-release: applied", "force-release: lease lost", "force-release: not found",
	"force-fail: applied", "force-fail: lease lost", "force-fail: not found",
	"force-delete: applied", "force-delete: lease lost", "force-delete: not found",
	"restore: stored", "restore: overwrote a live record", "restore: exists", "restore: expired, refused",
	"end: lease lost to another record with its token", "end: applied on its record put back by Restore",
	"do: ran, completed", "do: ran, retryable failure", "do: ran, permanent failure",
	"do: replay", "do: replay of a permanent failure", "do: in progress", "do: fingerprint mismatch",
}

// model is the expected state of every key, and the store it checks.
type model struct {
	t    *testing.T
	s    *idem.Store
	clk  *Clock
	seed uint64

	// clockMu is held for reading by every operation and for writing by
	// an advance, so the clock stands still while an operation runs.
	clockMu     sync.RWMutex
	lastAdvance time.Time // real time of the last advance; guarded by clockMu

	keys   [modelKeys]*keyModel
	ops    atomic.Int64
	failed atomic.Bool

	outMu    sync.Mutex     // protects outcomes
	outcomes map[string]int // how often each kind of answer came
}

// saw counts an answer of kind what.
func (m *model) saw(what string) {
	m.outMu.Lock()
	m.outcomes[what]++
	m.outMu.Unlock()
}

// keyModel is what the store must hold under one key.
type keyModel struct {
	name string
	idx  int // in model.keys

	mu sync.Mutex // serializes the key's operations; protects the fields below
	// rec is the stored record, nil when there is none. An expired record
	// stays here, as it stays in the backend: the clock jumps, the real
	// time that the backend's own expiry follows does not.
	rec      *idem.Record
	tokens   map[uint64]bool  // every token handed out under the key
	leases   map[leaseID]bool // every token handed out, with its record's CreatedAt
	restores int              // how many Restores were stored under the key
	granted  int              // how many times Do got a lease, so fn must have run
	ran      int              // how many times the fn given to Do ran
	log      []string         // the key's last operations, for failure messages
}

// leaseID is what a lease is fenced on: its token and its record's
// CreatedAt (in Unix nanoseconds).
type leaseID struct {
	token   uint64
	created int64
}

// policy is the lifetimes a lease was begun with.
type policy struct{ lease, completed, failed time.Duration }

// held is a lease a worker holds, live or long stale. A record is told
// from another by its CreatedAt, as the store's fencing tells them: a
// lease is on the stored record while that is in progress and carries
// the lease's token and CreatedAt, whatever wrote it (Restore may put back
// the record a lease was on, or another with its token).
type held struct {
	l        *idem.Lease
	key      int
	token    uint64
	created  time.Time
	restores int // the key's count when the lease was granted
	pol      policy
}

type worker struct {
	m    *model
	g    int
	rng  *rand.Rand
	held []held
	seen [modelKeys]*idem.Record // the last record each key was seen with
	resp int
}

func (m *model) work(g, ops int) {
	w := &worker{m: m, g: g, rng: rand.New(rand.NewPCG(m.seed, uint64(g)))}
	for i := 0; i < ops && !m.failed.Load(); i++ {
		w.step()
		m.ops.Add(1)
	}
}

func (w *worker) step() {
	r := w.rng.IntN(100)
	switch {
	case r < 10:
		w.advance()
	case r < 40:
		w.onKey(w.rng.IntN(modelKeys), w.begin)
	case r < 65 && len(w.held) > 0:
		// The newest lease half the time: it is the likeliest to be live.
		h := w.held[len(w.held)-1]
		if w.rng.IntN(2) == 0 {
			h = w.held[w.rng.IntN(len(w.held))]
		}
		w.onKey(h.key, func(k *keyModel, now time.Time) { w.endLease(k, now, h) })
	case r < 75:
		w.onKey(w.rng.IntN(modelKeys), func(k *keyModel, now time.Time) { w.get(k, now, "get") })
	case r < 78:
		w.onKey(w.rng.IntN(modelKeys), w.delete)
	case r < 88:
		w.onKey(w.rng.IntN(modelKeys), w.force)
	case r < 93:
		// Mostly on a held lease's key, with its token and
		// CreatedAt at hand: Restore then meets the leases it fences.
		if len(w.held) > 0 && w.rng.IntN(3) != 0 {
			h := w.held[w.rng.IntN(len(w.held))]
			w.onKey(h.key, func(k *keyModel, now time.Time) { w.restore(k, now, &h) })
			break
		}
		w.onKey(w.rng.IntN(modelKeys), func(k *keyModel, now time.Time) { w.restore(k, now, nil) })
	default:
		w.onKey(w.rng.IntN(modelKeys), w.do)
	}
}

// advance moves the clock: mostly a little, sometimes past every lease,
// now and then past the shorter record lifetimes or all of them. It also
// moves it by the real time since the last advance, so that the clock
// never falls behind the real one that backends expire entries by (the
// store writes physical expiries from the real clock).
func (w *worker) advance() {
	var d time.Duration
	switch r := w.rng.IntN(100); {
	case r < 60:
		d = w.dur(0, 3*time.Second)
	case r < 85:
		d = w.dur(leaseTTL-5*time.Second, leaseTTL+5*time.Second)
	case r < 95:
		d = w.dur(5*time.Minute, 15*time.Minute)
	default:
		d = w.dur(failedTTL, completedTTL+6*time.Hour)
	}
	m := w.m
	m.clockMu.Lock()
	defer m.clockMu.Unlock()
	now := time.Now()
	m.clk.Advance(d + now.Sub(m.lastAdvance))
	m.lastAdvance = now
}

func (w *worker) dur(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(w.rng.Int64N(int64(hi-lo)+1))
}

// onKey runs op on key i alone, with the clock standing still, and turns a
// panic into a failure.
func (w *worker) onKey(i int, op func(k *keyModel, now time.Time)) {
	k := w.m.keys[i]
	k.mu.Lock()
	defer k.mu.Unlock()
	if w.m.failed.Load() {
		return // one failure is enough: the key's history ends with it
	}
	w.m.clockMu.RLock()
	defer w.m.clockMu.RUnlock()
	now := w.m.clk.Now()
	defer func() {
		if p := recover(); p != nil {
			w.fail(k, "panic: %v", p)
		}
	}()
	op(k, now)
}

// fail reports a disagreement with the model, with the key's history, and
// stops the run.
func (w *worker) fail(k *keyModel, format string, args ...any) {
	w.m.failed.Store(true)
	w.m.t.Errorf("seed %d, key %q: %s\nthe key's last operations (clock as offset from T0):\n  %s",
		w.m.seed, k.name, fmt.Sprintf(format, args...), strings.Join(k.log, "\n  "))
}

func (w *worker) note(k *keyModel, now time.Time, format string, args ...any) {
	if len(k.log) == modelLog {
		k.log = k.log[1:]
	}
	k.log = append(k.log, fmt.Sprintf("t=%v g%d ", now.Sub(T0), w.g)+fmt.Sprintf(format, args...))
}

// live returns the key's record unless it is absent or expired at now.
func (k *keyModel) live(now time.Time) *idem.Record {
	if k.rec == nil || k.rec.Expired(now) {
		return nil
	}
	return k.rec
}

func (w *worker) response() []byte {
	w.resp++
	if w.rng.IntN(10) == 0 {
		return nil
	}
	return fmt.Appendf(nil, "response %d.%d", w.g, w.resp)
}

// ttlCtx returns a context with a WithTTL override, sometimes, and the
// override (0 for none).
func (w *worker) ttlCtx() (context.Context, time.Duration) {
	ctx := context.Background()
	var d time.Duration
	switch w.rng.IntN(10) {
	case 0:
		d = 10 * time.Minute // the shortest: see advance
	case 1:
		d = time.Hour
	case 2:
		d = 48 * time.Hour
	}
	if d > 0 {
		ctx = idem.WithTTL(ctx, d)
	}
	return ctx, d
}

// pickFP returns the fingerprint of a Begin or Do: mostly the one most
// records are made with, so that retries meet them.
func (w *worker) pickFP() []byte {
	if w.rng.IntN(4) == 0 {
		return fpB
	}
	return fpA
}

// beginCtx returns a context with the lifetimes of a Begin or Do,
// sometimes overridden, the policy they make and the WithTTL override.
// A lease shorter than the default comes only with short: Do renews its
// lease every third of it by the real clock, and fn's read of the leased
// record must not meet a renewal.
func (w *worker) beginCtx(short bool) (context.Context, policy, time.Duration) {
	ctx, ttl := w.ttlCtx()
	pol := policy{lease: leaseTTL, completed: completedTTL, failed: failedTTL}
	if ttl > 0 {
		pol.completed, pol.failed = ttl, ttl
	}
	if w.rng.IntN(5) == 0 {
		pol.lease = []time.Duration{5 * time.Second, 2 * time.Minute}[w.rng.IntN(2)]
		if !short {
			pol.lease = 2 * time.Minute
		}
		ctx = idem.WithLeaseTTL(ctx, pol.lease)
	}
	return ctx, pol, ttl
}

// decision is what the state table says a Begin (alone or inside Do) with
// fingerprint fp must answer at now.
type decision struct {
	cur     *idem.Record // the live record, nil when there is none
	want    *idem.Record // the record a granted lease is on; nil when no lease
	err     error        // when want is nil: ErrInProgress, ErrFingerprintMismatch, or nil for a replay
	what    string       // the kind of answer
	newLife bool         // want is a new record, whose first token the store chooses
}

func (k *keyModel) decide(now time.Time, fp []byte, pol policy) decision {
	d := decision{cur: k.live(now)}
	cur := d.cur
	switch {
	case cur == nil:
		d.what = "new record"
		if k.rec != nil {
			d.what = "new record over an expired one"
		}
		d.want = &idem.Record{Key: k.name, State: idem.StateInProgress, Fingerprint: fp, Attempts: 1,
			CreatedAt: now, UpdatedAt: now, LeaseUntil: now.Add(pol.lease)}
		d.want.ExpiresAt = latest(now.Add(pol.completed), d.want.LeaseUntil)
		d.newLife = true
	case !bytes.Equal(cur.Fingerprint, fp):
		d.what, d.err = "fingerprint mismatch", idem.ErrFingerprintMismatch
	case cur.State == idem.StateInProgress && now.Before(cur.LeaseUntil):
		d.what, d.err = "in progress", idem.ErrInProgress
	case cur.Finished():
		d.what = "replay"
	default: // a lapsed lease, or a retryable failure: a new lease on the record
		d.what = "takeover of a lapsed lease"
		if cur.State == idem.StateFailed {
			d.what = "retry of a retryable failure"
		}
		r := *cur
		r.State = idem.StateInProgress
		r.Response = nil
		r.Retryable = false
		r.Attempts++
		r.Token++
		r.UpdatedAt = now
		r.LeaseUntil = now.Add(pol.lease)
		r.ExpiresAt = latest(latest(cur.ExpiresAt, now.Add(pol.completed)), r.LeaseUntil)
		d.want = &r
	}
	return d
}

// adopt checks rec, the record of a lease op was granted by decision d,
// and makes it the key's record. It reports false after a failure.
func (w *worker) adopt(k *keyModel, d decision, rec *idem.Record, op string) bool {
	want := *d.want
	if d.newLife {
		// The first token of a record is the store's choice: it must be
		// above the token of an expired record the store still holds, so
		// that its holders stay fenced out, and new under the key. Once
		// Restore has put back a token below one handed out, the one
		// above the expired record may have been handed out before: then
		// the record's CreatedAt alone fences the old holders out, and
		// only the pair must be new.
		want.Token = rec.Token
		switch {
		case rec.Token == 0:
			w.fail(k, "%s: a new record got token 0", op)
			return false
		case k.rec != nil && rec.Token <= k.rec.Token:
			w.fail(k, "%s: the record that replaced an expired one (token %d) got token %d, not a larger one", op, k.rec.Token, rec.Token)
			return false
		case k.tokens[rec.Token] && k.restores == 0:
			w.fail(k, "%s: token %d was handed out before under this key", op, rec.Token)
			return false
		case k.leases[leaseID{rec.Token, rec.CreatedAt.UnixNano()}]:
			w.fail(k, "%s: token %d was handed out before under this key, on a record created at the same instant", op, rec.Token)
			return false
		}
	}
	if d := diff(&want, rec); d != "" {
		w.fail(k, "%s: the new lease's record is wrong: %s", op, d)
		return false
	}
	k.rec = &want
	k.tokens[want.Token] = true
	k.leases[leaseID{want.Token, want.CreatedAt.UnixNano()}] = true
	w.seen[k.idx] = rec
	return true
}

func (w *worker) begin(k *keyModel, now time.Time) {
	fp := w.pickFP()
	ctx, pol, ttl := w.beginCtx(true)
	l, rec, err := w.m.s.Begin(ctx, k.name, fp)
	desc := fmt.Sprintf("begin fp=%s ttl=%v lease=%v", fp, ttl, pol.lease)
	if l != nil {
		w.note(k, now, "%s -> lease token %d", desc, l.Token())
	} else {
		w.note(k, now, "%s -> %v (%s)", desc, err, describe(rec))
	}

	d := k.decide(now, fp, pol)
	if d.want == nil {
		if l != nil {
			w.fail(k, "Begin granted lease %d; want %v over the stored %s", l.Token(), orReplay(d.err), describe(d.cur))
			return
		}
		if !errors.Is(err, d.err) {
			w.fail(k, "Begin: got error %v, want %v", err, orReplay(d.err))
			return
		}
		if df := diff(d.cur, rec); df != "" {
			w.fail(k, "Begin (%v) answered with a record that is not the stored one: %s", orReplay(d.err), df)
			return
		}
		w.seen[k.idx] = rec
		w.m.saw("begin: " + d.what)
		w.check(k, now)
		return
	}

	if l == nil {
		w.fail(k, "Begin: got no lease (error %v, %s); want a lease over the stored %s", err, describe(rec), describe(d.cur))
		return
	}
	if err != nil || rec == nil {
		w.fail(k, "Begin: got a lease with error %v and record %s", err, describe(rec))
		return
	}
	if !w.adopt(k, d, rec, "Begin") {
		return
	}
	if l.Token() != rec.Token || l.Key() != k.name || !l.Until().Equal(rec.LeaseUntil) {
		w.fail(k, "Begin: the lease (key %q, token %d, until %v) does not match its record %s", l.Key(), l.Token(), l.Until(), describe(rec))
		return
	}
	if len(w.held) == modelHeld {
		w.held = w.held[1:]
	}
	w.held = append(w.held, held{l: l, key: k.idx, token: rec.Token, created: rec.CreatedAt, restores: k.restores, pol: pol})
	w.m.saw("begin: " + d.what)
	w.check(k, now)
}

// endLease runs Complete, Fail, Release or Extend on h. They apply only
// while h's record is live, in progress and carries h's token; otherwise
// ErrLeaseLost, and nothing changes.
func (w *worker) endLease(k *keyModel, now time.Time, h held) {
	cur := k.live(now)
	mine := cur != nil && cur.State == idem.StateInProgress && cur.Token == h.token && cur.CreatedAt.Equal(h.created)
	var next *idem.Record
	if mine {
		r := *cur
		next = &r
	}
	ctx, ttl := w.ttlCtx()
	pol := h.pol
	if ttl > 0 {
		pol.completed, pol.failed = ttl, ttl
	}
	var err error
	var desc, op string
	switch r := w.rng.IntN(10); {
	case r < 3:
		op = "complete"
		resp := w.response()
		desc = fmt.Sprintf("complete %q ttl=%v", resp, ttl)
		err = h.l.Complete(ctx, resp)
		if next != nil {
			finish(next, idem.StateCompleted, resp, false, now, pol.completed)
		}
	case r < 6:
		op = "fail"
		resp, retryable := w.response(), w.rng.IntN(2) == 0
		desc = fmt.Sprintf("fail %q retryable=%v ttl=%v", resp, retryable, ttl)
		err = h.l.Fail(ctx, resp, retryable)
		if next != nil {
			finish(next, idem.StateFailed, resp, retryable, now, pol.failed)
		}
	case r < 8:
		op = "extend"
		d := []time.Duration{time.Second, 10 * time.Second, 45 * time.Second, 2 * time.Minute, 30 * time.Hour}[w.rng.IntN(5)]
		desc = fmt.Sprintf("extend %v", d)
		err = h.l.Extend(ctx, d)
		if next != nil {
			next.LeaseUntil = now.Add(d)
			next.ExpiresAt = latest(next.ExpiresAt, next.LeaseUntil)
			next.UpdatedAt = now
		}
	default:
		op = "release"
		desc = "release"
		err = h.l.Release(ctx)
		next = nil
	}
	w.note(k, now, "lease %d (created %s): %s -> %v", h.token, offset(h.created), desc, err)
	if !mine {
		if !errors.Is(err, idem.ErrLeaseLost) {
			w.fail(k, "%s on lease %d of the record created %s: got %v, want ErrLeaseLost: the stored record is %s",
				desc, h.token, offset(h.created), err, describe(k.rec))
			return
		}
		w.m.saw(op + ": lease lost")
		if cur != nil && cur.State == idem.StateInProgress && cur.Token == h.token {
			// Only Restore makes this: fenced on the token alone, the
			// lease would write over a record it was never granted.
			w.m.saw("end: lease lost to another record with its token")
		}
		w.check(k, now) // and nothing changed
		return
	}
	if err != nil {
		w.fail(k, "%s on the live lease %d: %v", desc, h.token, err)
		return
	}
	w.m.saw(op + ": applied")
	if k.restores != h.restores {
		w.m.saw("end: applied on its record put back by Restore")
	}
	k.rec = next
	w.check(k, now)
}

func finish(r *idem.Record, st idem.State, resp []byte, retryable bool, now time.Time, ttl time.Duration) {
	r.State = st
	r.Response = resp
	r.Retryable = retryable
	r.UpdatedAt = now
	r.LeaseUntil = time.Time{}
	r.ExpiresAt = now.Add(ttl)
}

func (w *worker) delete(k *keyModel, now time.Time) {
	err := w.m.s.Delete(context.Background(), k.name)
	w.note(k, now, "delete -> %v", err)
	if err != nil {
		w.fail(k, "Delete: %v", err)
		return
	}
	k.rec = nil
	w.check(k, now)
}

// force runs an operator repair with the record the worker last saw under
// the key, which may be long out of date.
func (w *worker) force(k *keyModel, now time.Time) {
	seen := w.seen[k.idx]
	if seen == nil {
		w.get(k, now, "get")
		return
	}
	cur := k.live(now)
	ctx, ttl := w.ttlCtx()
	var err, wantErr error
	var next *idem.Record
	var desc, op string
	switch r := w.rng.IntN(3); {
	case r == 0 || r == 1:
		if cur != nil && (cur.State != idem.StateInProgress || cur.Token != seen.Token) {
			wantErr = idem.ErrLeaseLost
		}
		if r == 0 {
			op = "force-release"
			desc = fmt.Sprintf("force-release token %d", seen.Token)
			err = w.m.s.ForceRelease(ctx, k.name, seen.Token)
			break
		}
		op = "force-fail"
		resp, retryable := w.response(), w.rng.IntN(2) == 0
		desc = fmt.Sprintf("force-fail token %d %q retryable=%v ttl=%v", seen.Token, resp, retryable, ttl)
		err = w.m.s.ForceFail(ctx, k.name, seen.Token, resp, retryable)
		if cur != nil && wantErr == nil {
			c := *cur
			next = &c
			if ttl == 0 {
				ttl = failedTTL
			}
			finish(next, idem.StateFailed, resp, retryable, now, ttl)
		}
	default:
		op = "force-delete"
		desc = fmt.Sprintf("force-delete %s", describe(seen))
		err = w.m.s.ForceDelete(ctx, k.name, seen)
		if cur != nil && (cur.State != seen.State || cur.Token != seen.Token || !cur.CreatedAt.Equal(seen.CreatedAt)) {
			wantErr = idem.ErrLeaseLost
		}
	}
	if cur == nil {
		wantErr = idem.ErrNotFound
	}
	w.note(k, now, "%s -> %v", desc, err)
	if wantErr != nil {
		if !errors.Is(err, wantErr) {
			w.fail(k, "%s: got %v, want %v: the stored record is %s", desc, err, wantErr, describe(cur))
			return
		}
		w.m.saw(op + ": " + map[error]string{idem.ErrLeaseLost: "lease lost", idem.ErrNotFound: "not found"}[wantErr])
		w.check(k, now)
		return
	}
	if err != nil {
		w.fail(k, "%s: %v, over the stored %s", desc, err, describe(cur))
		return
	}
	w.m.saw(op + ": applied")
	k.rec = next
	w.check(k, now)
}

// restore runs Restore with a record built from the key's record, or from
// h's: its token below, equal to or above theirs, its CreatedAt theirs or
// another, in any state, now and then already expired.
func (w *worker) restore(k *keyModel, now time.Time, h *held) {
	var ref uint64
	var created time.Time
	switch {
	case h != nil:
		ref, created = h.token, h.created
	case k.rec != nil:
		ref, created = k.rec.Token, k.rec.CreatedAt
	default:
		ref, created = 1<<32+w.rng.Uint64N(1<<40), now
	}
	// Equal half the time: the record then carries a lease's token,
	// and the lease must still be on it or not by its CreatedAt alone.
	tok := ref
	switch w.rng.IntN(4) {
	case 0:
		tok = ref - 1 - w.rng.Uint64N(2) // never 0: the store's tokens are random below 2^52
	case 1:
		tok = ref + 1 + w.rng.Uint64N(2)
	}
	if w.rng.IntN(2) == 0 {
		created = now.Add(-w.dur(0, time.Hour)) // another record
	}
	fp := w.pickFP()
	if k.rec != nil && w.rng.IntN(4) != 0 {
		fp = k.rec.Fingerprint
	}
	rec := &idem.Record{Key: k.name, State: []idem.State{idem.StateInProgress, idem.StateInProgress, idem.StateCompleted, idem.StateFailed}[w.rng.IntN(4)],
		Fingerprint: fp, Attempts: 1 + w.rng.IntN(4), Token: tok, CreatedAt: created, UpdatedAt: now}
	ttl := []time.Duration{10 * time.Minute, time.Hour, completedTTL}[w.rng.IntN(3)]
	rec.ExpiresAt = now.Add(ttl)
	expired := w.rng.IntN(15) == 0
	if expired {
		rec.ExpiresAt = now.Add(-w.dur(0, time.Hour))
	}
	if rec.State == idem.StateInProgress {
		rec.LeaseUntil = now.Add([]time.Duration{-5 * time.Second, 10 * time.Second, 2 * time.Minute}[w.rng.IntN(3)])
		if expired {
			rec.LeaseUntil = rec.ExpiresAt.Add(-time.Second)
		}
		rec.ExpiresAt = latest(rec.ExpiresAt, rec.LeaseUntil)
	} else {
		rec.Response = w.response()
		rec.Retryable = rec.State == idem.StateFailed && w.rng.IntN(2) == 0
	}
	cur := k.live(now)
	if cur != nil && diff(cur, rec) == "" {
		// Restoring the stored record again is a no-op that succeeds
		// even without overwrite: keep to the documented cases.
		rec.Attempts++
	}
	overwrite := w.rng.IntN(3) != 0
	arg := *rec // Restore must not keep or change it
	err := w.m.s.Restore(context.Background(), &arg, overwrite)
	w.note(k, now, "restore %s overwrite=%v -> %v", describe(rec), overwrite, err)
	if d := diff(rec, &arg); d != "" {
		w.fail(k, "Restore changed the record it was given: %s", d)
		return
	}
	switch {
	case expired:
		if err == nil || errors.Is(err, idem.ErrExists) {
			w.fail(k, "Restore of a record that expired at %s: got %v, want an error saying it expired", offset(rec.ExpiresAt), err)
			return
		}
		w.m.saw("restore: expired, refused")
	case cur != nil && !overwrite:
		if !errors.Is(err, idem.ErrExists) {
			w.fail(k, "Restore without overwrite over the live %s: got %v, want ErrExists", describe(cur), err)
			return
		}
		w.m.saw("restore: exists")
	case err != nil:
		w.fail(k, "Restore (overwrite %v) over %s: %v", overwrite, describe(cur), err)
		return
	default:
		w.m.saw(map[bool]string{false: "restore: stored", true: "restore: overwrote a live record"}[cur != nil])
		k.rec = rec
		k.restores++
	}
	w.check(k, now)
	if h != nil && err == nil && !w.m.failed.Load() && w.rng.IntN(2) == 0 {
		// The lease held from before must be on the restored record
		// exactly when that carries its token and CreatedAt.
		w.endLease(k, now, *h)
	}
}

var (
	errRetryable = errors.New("model: a failure worth retrying")
	errDeclined  = errors.New("model: declined")
)

// do runs Do with an fn that returns a response, a retryable error or a
// Permanent one. fn must run exactly when the state table grants a lease;
// while it runs, it checks the leased record as Begin's checks are made.
func (w *worker) do(k *keyModel, now time.Time) {
	fp := w.pickFP()
	ctx, pol, ttl := w.beginCtx(false)
	d := k.decide(now, fp, pol)
	resp := w.response()
	kind := []string{"completed", "retryable failure", "permanent failure"}[w.rng.IntN(3)]
	var fnErr error
	switch kind {
	case "retryable failure":
		fnErr = errRetryable // with resp, which Do must not store
	case "permanent failure":
		fnErr = idem.Permanent(errDeclined, resp)
	}
	ran, adopted := 0, false
	fn := func(fctx context.Context) ([]byte, error) {
		ran++
		if d.want == nil || ran > 1 {
			return resp, fnErr // must not run: counted below
		}
		rec, err := w.m.s.Get(fctx, k.name)
		if err != nil {
			w.fail(k, "Do: Get while fn runs: %v", err)
			return resp, fnErr
		}
		adopted = w.adopt(k, d, rec, "Do")
		return resp, fnErr
	}
	got, replayed, err := w.m.s.Do(ctx, k.name, fp, fn)
	w.note(k, now, "do fp=%s ttl=%v lease=%v fn=%s %q -> ran %d: %q replayed=%v %v", fp, ttl, pol.lease, kind, resp, ran, got, replayed, err)

	k.ran += ran
	if d.want != nil {
		k.granted++
	}
	if k.ran != k.granted {
		w.fail(k, "Do: fn has run %d times under the key, but Do got a lease %d times (this call: ran %d, want %v over the stored %s; Do returned %v)",
			k.ran, k.granted, ran, d.what, describe(d.cur), err)
		return
	}
	if d.want == nil {
		var wantResp []byte
		wantErr, what := d.err, "do: "+d.what
		if d.err == nil { // a replay
			wantResp = d.cur.Response
			if d.cur.State == idem.StateFailed {
				wantErr, what = idem.ErrFailed, "do: replay of a permanent failure"
			}
		}
		if !errors.Is(err, wantErr) || (wantErr == nil && err != nil) || replayed != (d.err == nil) || !bytes.Equal(got, wantResp) {
			w.fail(k, "Do: got %q replayed=%v error %v; want %q replayed=%v error %v, over the stored %s",
				got, replayed, err, wantResp, d.err == nil, wantErr, describe(d.cur))
			return
		}
		w.m.saw(what)
		w.check(k, now)
		return
	}
	if !adopted {
		return // failed inside fn
	}
	next := *k.rec
	wantResp := resp
	switch kind {
	case "completed":
		finish(&next, idem.StateCompleted, resp, false, now, pol.completed)
		if err != nil {
			w.fail(k, "Do: fn returned %q, yet Do returned error %v", resp, err)
			return
		}
	case "retryable failure":
		finish(&next, idem.StateFailed, nil, true, now, pol.failed)
		wantResp = nil
		if !errors.Is(err, errRetryable) || errors.Is(err, idem.ErrFailed) {
			w.fail(k, "Do: fn returned %v, yet Do returned error %v", fnErr, err)
			return
		}
	case "permanent failure":
		finish(&next, idem.StateFailed, resp, false, now, pol.failed)
		var perm *idem.PermanentError
		if !errors.Is(err, errDeclined) || !errors.As(err, &perm) || !bytes.Equal(perm.Response, resp) {
			w.fail(k, "Do: fn returned Permanent(%v, %q), yet Do returned error %v", errDeclined, resp, err)
			return
		}
	}
	if replayed || !bytes.Equal(got, wantResp) {
		w.fail(k, "Do: fn ran and returned %q, %v; Do returned %q replayed=%v", resp, fnErr, got, replayed)
		return
	}
	k.rec = &next
	w.m.saw("do: ran, " + kind)
	w.check(k, now)
}

// get reads the key and compares it with the model.
func (w *worker) get(k *keyModel, now time.Time, why string) {
	rec, err := w.m.s.Get(context.Background(), k.name)
	if why == "get" {
		w.note(k, now, "get -> %v %s", err, describe(rec))
	}
	want := k.live(now)
	switch {
	case want == nil && !errors.Is(err, idem.ErrNotFound):
		w.fail(k, "%s: got %s (error %v), want ErrNotFound", why, describe(rec), err)
	case want != nil && err != nil:
		w.fail(k, "%s: got error %v, want %s", why, err, describe(want))
	case want != nil:
		if d := diff(want, rec); d != "" {
			w.fail(k, "%s: %s", why, d)
			return
		}
		w.seen[k.idx] = rec
	}
}

// check reads the key back after an operation.
func (w *worker) check(k *keyModel, now time.Time) {
	w.get(k, now, "read back after the operation")
}

func orReplay(err error) any {
	if err == nil {
		return "a replay"
	}
	return err
}

// diff describes how got differs from want, or returns "".
func diff(want, got *idem.Record) string {
	if want == nil || got == nil {
		if want == got {
			return ""
		}
		return fmt.Sprintf("got %s, want %s", describe(got), describe(want))
	}
	var d []string
	field := func(name string, equal bool, w, g any) {
		if !equal {
			d = append(d, fmt.Sprintf("%s is %v, want %v", name, g, w))
		}
	}
	field("Key", want.Key == got.Key, want.Key, got.Key)
	field("State", want.State == got.State, want.State, got.State)
	field("Fingerprint", bytes.Equal(want.Fingerprint, got.Fingerprint), string(want.Fingerprint), string(got.Fingerprint))
	field("Response", bytes.Equal(want.Response, got.Response), fmt.Sprintf("%q", want.Response), fmt.Sprintf("%q", got.Response))
	field("Retryable", want.Retryable == got.Retryable, want.Retryable, got.Retryable)
	field("Attempts", want.Attempts == got.Attempts, want.Attempts, got.Attempts)
	field("Token", want.Token == got.Token, want.Token, got.Token)
	for _, f := range []struct {
		name string
		w, g time.Time
	}{
		{"CreatedAt", want.CreatedAt, got.CreatedAt},
		{"UpdatedAt", want.UpdatedAt, got.UpdatedAt},
		{"LeaseUntil", want.LeaseUntil, got.LeaseUntil},
		{"ExpiresAt", want.ExpiresAt, got.ExpiresAt},
	} {
		field(f.name, f.w.Equal(f.g), offset(f.w), offset(f.g))
	}
	if d == nil {
		return ""
	}
	return strings.Join(d, "; ") + " (want " + describe(want) + ")"
}

// offset shows an instant as its distance from T0, or "zero".
func offset(t time.Time) string {
	if t.IsZero() {
		return "zero"
	}
	return "T0+" + t.Sub(T0).String()
}

func describe(r *idem.Record) string {
	if r == nil {
		return "no record"
	}
	s := fmt.Sprintf("%s fp=%s token=%d attempts=%d created=%s expires=%s",
		r.State, r.Fingerprint, r.Token, r.Attempts, offset(r.CreatedAt), offset(r.ExpiresAt))
	switch r.State {
	case idem.StateInProgress:
		s += " lease-until=" + offset(r.LeaseUntil)
	default:
		s += fmt.Sprintf(" response=%q retryable=%v", r.Response, r.Retryable)
	}
	return s
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// raceHistory is what the racing workers saw on one key, recorded after
// each operation returned: it orders nothing, so the checks on it need no
// order either.
type raceHistory struct {
	mu      sync.Mutex // protects the fields below
	grants  []uint64   // tokens of the leases Begin granted
	ends    map[uint64][]raceEnd
	replays []*idem.Record
}

type raceEnd struct {
	st        idem.State
	retryable bool
	response  []byte
}

// testRacing runs the same operations on the same keys at once, with no
// serialization by the test, so that the backend's compare-and-swap is
// raced, and checks what must hold however they interleave. The clock
// stands still and nothing deletes, so a lease never lapses and a key's
// next lease can only follow a retryable failure of the one before.
func testRacing(t *testing.T, open Opener, seed uint64, rounds int) {
	const keys, ops = 4, 60 // per round; ops per worker
	ctx := context.Background()
	s, _ := fixture(t, open)
	grants := 0
	for r := 0; r < rounds; r++ {
		hist := make([]*raceHistory, keys)
		for i := range hist {
			hist[i] = &raceHistory{ends: map[uint64][]raceEnd{}}
		}
		name := func(i int) string { return fmt.Sprintf("race-%d-%d", r, i) }
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := 0; g < modelWorkers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				rng := rand.New(rand.NewPCG(seed, uint64(r*modelWorkers+g)))
				var held []*idem.Lease
				for n := 0; n < ops; n++ {
					i := rng.IntN(keys)
					h := hist[i]
					if len(held) == 0 || rng.IntN(2) == 0 {
						l, rec, err := s.Begin(ctx, name(i), fpA)
						switch {
						case l != nil:
							held = append(held, l)
							h.mu.Lock()
							h.grants = append(h.grants, l.Token())
							h.mu.Unlock()
						case err == nil:
							h.mu.Lock()
							h.replays = append(h.replays, rec)
							h.mu.Unlock()
						case !errors.Is(err, idem.ErrInProgress):
							t.Errorf("seed %d, key %q: Begin: %v", seed, name(i), err)
						}
						continue
					}
					l := held[len(held)-1]
					if rng.IntN(2) == 0 {
						l = held[rng.IntN(len(held))]
					}
					var e raceEnd
					var err error
					switch x := rng.IntN(10); {
					case x < 3:
						e = raceEnd{st: idem.StateCompleted, response: fmt.Appendf(nil, "done by %d", l.Token())}
						err = l.Complete(ctx, e.response)
					case x < 8:
						e = raceEnd{st: idem.StateFailed, retryable: true}
						err = l.Fail(ctx, nil, true)
					case x < 9:
						e = raceEnd{st: idem.StateFailed, response: fmt.Appendf(nil, "declined by %d", l.Token())}
						err = l.Fail(ctx, e.response, false)
					default:
						err = l.Extend(ctx, time.Minute)
						e.st = idem.StateInProgress
					}
					switch {
					case err == nil && e.st != idem.StateInProgress:
						hl := hist[keyIndex(l.Key())]
						hl.mu.Lock()
						hl.ends[l.Token()] = append(hl.ends[l.Token()], e)
						hl.mu.Unlock()
					case err != nil && !errors.Is(err, idem.ErrLeaseLost):
						t.Errorf("seed %d, key %q: ending lease %d: %v", seed, l.Key(), l.Token(), err)
					}
				}
			}()
		}
		close(start)
		wg.Wait()
		for i, h := range hist {
			if msg := h.check(ctx, s, name(i)); msg != "" {
				t.Errorf("seed %d, key %q: %s", seed, name(i), msg)
				return
			}
			grants += len(h.grants)
		}
	}
	st := s.Stats()
	t.Logf("seed %d: %d rounds, %d leases, %d lost compare-and-swaps", seed, rounds, grants, st.Conflicts)
	if !testing.Short() && st.Conflicts == 0 {
		t.Errorf("seed %d: no compare-and-swap was lost to another: the racing did not race", seed)
	}
}

// keyIndex returns i of the key "race-r-i".
func keyIndex(key string) int {
	i, _ := strconv.Atoi(key[strings.LastIndexByte(key, '-')+1:])
	return i
}

// check says what in h breaks the rules, or returns "". With the clock
// standing still the leases of a key have consecutive tokens; each ended
// at most once; every one but the last failed retryably (nothing else lets
// the next be granted); only the last may have a final outcome, and every
// replay is that outcome, which is also what is stored now.
func (h *raceHistory) check(ctx context.Context, s *idem.Store, key string) string {
	if len(h.grants) == 0 {
		return ""
	}
	slices.Sort(h.grants)
	first, last := h.grants[0], h.grants[len(h.grants)-1]
	for n, tok := range h.grants {
		if tok != first+uint64(n) {
			return fmt.Sprintf("lease tokens %v are not consecutive: two leases were live at once", h.grants)
		}
	}
	var final *raceEnd
	for tok, ends := range h.ends {
		if len(ends) > 1 {
			return fmt.Sprintf("lease %d ended %d times: %v", tok, len(ends), ends)
		}
		e := ends[0]
		if e.st == idem.StateCompleted || !e.retryable {
			if tok != last {
				return fmt.Sprintf("lease %d ended with a final %s, yet lease %d was granted after it (leases %v)", tok, e.st, last, h.grants)
			}
			final = &e
		}
	}
	for _, tok := range h.grants[:len(h.grants)-1] {
		if e := h.ends[tok]; len(e) == 0 || !e[0].retryable {
			return fmt.Sprintf("lease %d was followed by lease %d without failing retryably (its ends: %v)", tok, tok+1, e)
		}
	}
	for _, rec := range h.replays {
		if final == nil || rec.State != final.st || !bytes.Equal(rec.Response, final.response) || rec.Token != last {
			return fmt.Sprintf("Begin replayed %s, but the final outcome was %v (leases %v)", describe(rec), final, h.grants)
		}
	}
	rec, err := s.Get(ctx, key)
	if err != nil {
		return fmt.Sprintf("Get after the round: %v", err)
	}
	ends := h.ends[last]
	switch {
	case rec.Token != last:
		return fmt.Sprintf("stored token %d, but the last lease was %d", rec.Token, last)
	case len(ends) == 0 && rec.State != idem.StateInProgress:
		return fmt.Sprintf("the last lease never ended, yet the record is %s", describe(rec))
	case len(ends) == 1 && (rec.State != ends[0].st || rec.Retryable != ends[0].retryable || !bytes.Equal(rec.Response, ends[0].response)):
		return fmt.Sprintf("the last lease ended with %v, yet the record is %s", ends[0], describe(rec))
	}
	return ""
}
