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
// keys, with a clock the test moves in jumps past lease lapses and record
// expiries, and checks every answer against a model of the state table
// ("plain", and "cached" with the read cache on).
//
// The model is exact because each key's operations are serialized by a
// mutex of the test (the store sees different keys at once), and the clock
// stands still while an operation runs: the workers hold clockMu for
// reading and an advance takes it for writing. So every answer, record
// and error, has one right value, computed from the key's previous
// answers. What the model does not know, the first token of a new record,
// it checks for what the contract promises (a token never handed out
// before under the key, and above the expired record's) and then adopts.
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
				m.keys[i] = &keyModel{name: fmt.Sprintf("model-%d", i), idx: i, tokens: map[uint64]bool{}}
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
	lives  atomic.Uint64 // numbers the records of all keys
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
	rec    *idem.Record
	life   uint64          // which record rec is: leases are fenced on it
	tokens map[uint64]bool // every token handed out under the key
	log    []string        // the key's last operations, for failure messages
}

// policy is the lifetimes a lease was begun with.
type policy struct{ lease, completed, failed time.Duration }

// held is a lease a worker holds, live or long stale.
type held struct {
	l     *idem.Lease
	key   int
	life  uint64
	token uint64
	pol   policy
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
	case r < 45:
		w.onKey(w.rng.IntN(modelKeys), w.begin)
	case r < 70 && len(w.held) > 0:
		// The newest lease half the time: it is the likeliest to be live.
		h := w.held[len(w.held)-1]
		if w.rng.IntN(2) == 0 {
			h = w.held[w.rng.IntN(len(w.held))]
		}
		w.onKey(h.key, func(k *keyModel, now time.Time) { w.endLease(k, now, h) })
	case r < 82:
		w.onKey(w.rng.IntN(modelKeys), func(k *keyModel, now time.Time) { w.get(k, now, "get") })
	case r < 85:
		w.onKey(w.rng.IntN(modelKeys), w.delete)
	default:
		w.onKey(w.rng.IntN(modelKeys), w.force)
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

func (w *worker) begin(k *keyModel, now time.Time) {
	fp := fpA
	if w.rng.IntN(4) == 0 {
		fp = fpB
	}
	ctx, ttl := w.ttlCtx()
	pol := policy{lease: leaseTTL, completed: completedTTL, failed: failedTTL}
	if ttl > 0 {
		pol.completed, pol.failed = ttl, ttl
	}
	if w.rng.IntN(5) == 0 {
		pol.lease = []time.Duration{5 * time.Second, 2 * time.Minute}[w.rng.IntN(2)]
		ctx = idem.WithLeaseTTL(ctx, pol.lease)
	}
	l, rec, err := w.m.s.Begin(ctx, k.name, fp)
	desc := fmt.Sprintf("begin fp=%s ttl=%v lease=%v", fp, ttl, pol.lease)
	if l != nil {
		w.note(k, now, "%s -> lease token %d", desc, l.Token())
	} else {
		w.note(k, now, "%s -> %v (%s)", desc, err, describe(rec))
	}

	cur := k.live(now)
	var want *idem.Record // the record a lease is on
	var wantErr error
	var what string
	newLife := false
	switch {
	case cur == nil:
		what = "begin: new record"
		if k.rec != nil {
			what = "begin: new record over an expired one"
		}
		want = &idem.Record{Key: k.name, State: idem.StateInProgress, Fingerprint: fp, Attempts: 1,
			CreatedAt: now, UpdatedAt: now, LeaseUntil: now.Add(pol.lease)}
		want.ExpiresAt = latest(now.Add(pol.completed), want.LeaseUntil)
		newLife = true
	case !bytes.Equal(cur.Fingerprint, fp):
		what, wantErr = "begin: fingerprint mismatch", idem.ErrFingerprintMismatch
	case cur.State == idem.StateInProgress && now.Before(cur.LeaseUntil):
		what, wantErr = "begin: in progress", idem.ErrInProgress
	case cur.Finished():
		what = "begin: replay"
	default: // a lapsed lease, or a retryable failure: a new lease on the record
		what = "begin: takeover of a lapsed lease"
		if cur.State == idem.StateFailed {
			what = "begin: retry of a retryable failure"
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
		want = &r
	}

	if want == nil {
		if l != nil {
			w.fail(k, "Begin granted lease %d; want %v over the stored %s", l.Token(), orReplay(wantErr), describe(cur))
			return
		}
		if !errors.Is(err, wantErr) {
			w.fail(k, "Begin: got error %v, want %v", err, orReplay(wantErr))
			return
		}
		if d := diff(cur, rec); d != "" {
			w.fail(k, "Begin (%v) answered with a record that is not the stored one: %s", orReplay(wantErr), d)
			return
		}
		w.seen[k.idx] = rec
		w.m.saw(what)
		w.check(k, now)
		return
	}

	if l == nil {
		w.fail(k, "Begin: got no lease (error %v, %s); want a lease over the stored %s", err, describe(rec), describe(cur))
		return
	}
	if err != nil || rec == nil {
		w.fail(k, "Begin: got a lease with error %v and record %s", err, describe(rec))
		return
	}
	if newLife {
		// The first token of a record is the store's choice: it must be
		// new under the key, and above the token of an expired record the
		// store still holds, so that its holders stay fenced out.
		want.Token = rec.Token
		switch {
		case rec.Token == 0:
			w.fail(k, "Begin: a new record got token 0")
			return
		case k.rec != nil && rec.Token <= k.rec.Token:
			w.fail(k, "Begin: the record that replaced an expired one (token %d) got token %d, not a larger one", k.rec.Token, rec.Token)
			return
		}
	}
	if k.tokens[rec.Token] {
		w.fail(k, "Begin: token %d was handed out before under this key", rec.Token)
		return
	}
	if d := diff(want, rec); d != "" {
		w.fail(k, "Begin: the new lease's record is wrong: %s", d)
		return
	}
	if l.Token() != rec.Token || l.Key() != k.name || !l.Until().Equal(rec.LeaseUntil) {
		w.fail(k, "Begin: the lease (key %q, token %d, until %v) does not match its record %s", l.Key(), l.Token(), l.Until(), describe(rec))
		return
	}
	if newLife {
		k.life = w.m.lives.Add(1)
	}
	k.rec = want
	k.tokens[want.Token] = true
	w.seen[k.idx] = rec
	if len(w.held) == modelHeld {
		w.held = w.held[1:]
	}
	w.held = append(w.held, held{l: l, key: k.idx, life: k.life, token: want.Token, pol: pol})
	w.m.saw(what)
	w.check(k, now)
}

// endLease runs Complete, Fail, Release or Extend on h. They apply only
// while h's record is live, in progress and carries h's token; otherwise
// ErrLeaseLost, and nothing changes.
func (w *worker) endLease(k *keyModel, now time.Time, h held) {
	cur := k.live(now)
	mine := cur != nil && cur.State == idem.StateInProgress && k.life == h.life && cur.Token == h.token
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
	w.note(k, now, "lease %d (record #%d): %s -> %v", h.token, h.life, desc, err)
	if !mine {
		if !errors.Is(err, idem.ErrLeaseLost) {
			w.fail(k, "%s on lease %d of record #%d: got %v, want ErrLeaseLost: the stored record is #%d %s",
				desc, h.token, h.life, err, k.life, describe(k.rec))
			return
		}
		w.m.saw(op + ": lease lost")
		w.check(k, now) // and nothing changed
		return
	}
	if err != nil {
		w.fail(k, "%s on the live lease %d: %v", desc, h.token, err)
		return
	}
	w.m.saw(op + ": applied")
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
