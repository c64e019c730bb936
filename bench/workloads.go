package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/badgerkv"
	"github.com/idemdb/idem/internal/storeinternal"
)

// env is what workloads share within one run.
type env struct {
	records  int           // size of the main data set
	duration time.Duration // timed work per side of each comparison
	fx       *fixtures
	root     string    // scratch directory, removed at the end
	progress io.Writer // progress bars; nil for none
	// child runs this program again in a fresh process for the memory
	// workload, with the given extra environment, and returns its stdout.
	child func(env ...string) ([]byte, error)
	// command makes the same child process without starting it.
	command func(env ...string) *exec.Cmd
}

func (e *env) tempDir(name string) (string, error) {
	return os.MkdirTemp(e.root, name+"-")
}

// goal is a target a row's figure must reach.
type goal struct {
	Cmp   string  `json:"cmp"` // ">=" or "<="
	Value float64 `json:"value"`
	Unit  string  `json:"unit"` // "x", "MB", "%"
}

func (g *goal) String() string {
	if g == nil {
		return ""
	}
	if g.Unit == "x" {
		return fmt.Sprintf("%s %.1fx", g.Cmp, g.Value)
	}
	return fmt.Sprintf("%s %g %s", g.Cmp, g.Value, g.Unit)
}

func (g *goal) met(v float64) bool {
	if g.Cmp == "<=" {
		return v <= g.Value
	}
	return v >= g.Value
}

// row is one line of the report.
type row struct {
	Workload  string  `json:"workload"`
	Operation string  `json:"operation"`
	Subject   *result `json:"subject,omitempty"`
	Baseline  *result `json:"baseline,omitempty"`
	// Figure is the row's judged number: the ops/s ratio of subject to
	// baseline, or, for the scale, memory and disk rows, the quantity named
	// by Goal's unit.
	Figure float64 `json:"figure"`
	Unit   string  `json:"unit"`
	Goal   *goal   `json:"goal,omitempty"`
	Pass   *bool   `json:"pass,omitempty"`
	Note   string  `json:"note,omitempty"`
	// Skipped says why the row was not measured (a missing redis-server);
	// such a row has no sides, no figure and no verdict.
	Skipped string `json:"skipped,omitempty"`
}

func (r *row) judge() {
	if r.Goal != nil {
		p := r.Goal.met(r.Figure)
		r.Pass = &p
	}
}

// workload is one entry of the report: it produces one or more rows.
type workload struct {
	name string // what -only matches
	desc string
	rows func(ctx context.Context, e *env) ([]row, error)
}

// extraWorkloads holds workloads registered by other files of this package
// (the Redis backend and the HTTP middleware rows register here from their
// own init functions, so this list needs no edit when they land).
var extraWorkloads []workload

// register adds workloads to the report, after the embedded store's.
func register(w ...workload) { extraWorkloads = append(extraWorkloads, w...) }

// optInWorkloads run only when -only names them: they take minutes or
// need privileges (scale-limited).
var optInWorkloads []workload

func registerOptIn(w ...workload) { optInWorkloads = append(optInWorkloads, w...) }

// workloads returns every workload in report order.
func workloads() []workload {
	ws := []workload{
		{"get", "Get of a completed record vs raw Badger View+Get+msgpack.Unmarshal", getRows},
		{"get-cache", "Get with the read cache on vs the same raw Badger read", getCacheRows},
		{"get-miss", "Get of an absent key vs a raw Badger miss", missRows},
		{"begin", "Begin on fresh keys vs a raw create-if-absent transaction", beginRows},
		{"complete", "durable Complete (SyncAlways, group commit) vs Badger SyncWrites, one txn per completion", completeRows},
		{"mixed", "90% Get of existing keys, 10% Begin+Complete, vs the same on raw Badger", mixedRows},
		{"scale", "Get p50 at growing record counts", scaleRows},
		{"memory", "peak anonymous RSS of a fresh process loading the records with default options, mapped tables beside it", memoryRows},
		{"reclaim", "disk use after records expire and CollectGarbage runs", reclaimRows},
		// Redis-backed Get vs embedded Get (redis.go), and idemhttp replay
		// vs a bare handler (replay.go), come from register.
	}
	return append(ws, extraWorkloads...)
}

// selected returns the workloads whose name matches only (a comma list;
// empty means all).
func selected(only string) ([]workload, error) {
	all := workloads()
	if only == "" {
		return all, nil
	}
	all = append(all, optInWorkloads...)
	var out []workload
	for _, name := range strings.Split(only, ",") {
		i := slices.IndexFunc(all, func(w workload) bool { return w.name == strings.TrimSpace(name) })
		if i < 0 {
			var names []string
			for _, w := range all {
				names = append(names, w.name)
			}
			return nil, fmt.Errorf("-only: unknown workload %q (have %s)", name, strings.Join(names, ", "))
		}
		out = append(out, all[i])
	}
	return out, nil
}

// compare runs subject and baseline in alternating rounds with the same
// number of workers and makes a row of the ratio of their ops/s.
func compare(e *env, wl, op string, workers int, g *goal, subject, baseline func() (*target, error)) (r row, err error) {
	r = row{Workload: wl, Operation: op, Unit: "x", Goal: g}
	var ts []*target
	defer func() {
		for _, t := range ts {
			if t.close != nil {
				err = errors.Join(err, t.close())
			}
		}
	}()
	for _, mk := range []func() (*target, error){subject, baseline} {
		t, err := mk()
		if err != nil {
			return r, err
		}
		ts = append(ts, t)
	}
	res, err := run(ts, workers, e.duration)
	if err != nil {
		return r, fmt.Errorf("%s: %w", op, err)
	}
	r.Subject, r.Baseline = &res[0], &res[1]
	r.Figure = r.Subject.OpsPerS / r.Baseline.OpsPerS
	r.judge()
	return r, nil
}

// rngs returns one random source per worker, so workers never contend on
// one.
func rngs(n int) []*rand.Rand {
	rs := make([]*rand.Rand, n)
	for i := range rs {
		rs[i] = rand.New(rand.NewPCG(uint64(i)+1, 42))
	}
	return rs
}

func getTargets(fx *fixture, s *idem.Store, keys []string, workers int) (subject, baseline func() (*target, error)) {
	ctx := context.Background()
	subject = func() (*target, error) {
		rs := rngs(workers)
		return &target{op: func(w int) error {
			_, err := s.Get(ctx, keys[rs[w].IntN(len(keys))])
			return err
		}}, nil
	}
	baseline = func() (*target, error) {
		rs := rngs(workers)
		return &target{op: func(w int) error {
			_, err := rawGet(fx.db, keys[rs[w].IntN(len(keys))], time.Now())
			return err
		}}, nil
	}
	return subject, baseline
}

func getRows(_ context.Context, e *env) ([]row, error) {
	fx, err := e.fx.get(e.records)
	if err != nil {
		return nil, err
	}
	var rows []row
	for _, g := range []int{2, 16} {
		s, b := getTargets(fx, fx.store, fx.keys, g)
		r, err := compare(e, "get", fmt.Sprintf("Get completed, %s records, goroutines=%d", count(fx.n), g), g,
			&goal{">=", 1, "x"}, s, b)
		if err != nil {
			return rows, err
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// shared lets a second Store run over a fixture's backend; the fixture's
// own store closes the backend.
type shared struct{ idem.Backend }

func (shared) Close() error { return nil }

// hotKeys is how many keys the cached reads spread over: the records a
// service sees retried within the cache's lifetime.
const hotKeys = 100_000

// cacheSize is the read cache the cached workloads run with.
const cacheSize = 64 << 20

func getCacheRows(ctx context.Context, e *env) ([]row, error) {
	fx, err := e.fx.get(e.records)
	if err != nil {
		return nil, err
	}
	s, err := idem.New(shared{storeinternal.Backend(fx.store).(idem.Backend)}, &idem.Options{CacheSize: cacheSize, GCInterval: -1})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	hot := fx.keys[:min(hotKeys, len(fx.keys))]
	// Warm the cache: the first Get of a key fills it, asynchronously.
	for range 2 {
		for _, k := range hot {
			if _, err := s.Get(ctx, k); err != nil {
				return nil, err
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	var rows []row
	for _, g := range []int{2, 16} {
		sub, base := getTargets(fx, s, hot, g)
		before := s.Stats()
		r, err := compare(e, "get-cache", fmt.Sprintf("Get completed, cache %d MiB, %s hot keys, goroutines=%d", cacheSize>>20, count(len(hot)), g), g,
			&goal{">=", 5, "x"}, sub, base)
		if err != nil {
			return rows, err
		}
		after := s.Stats()
		if n := after.Hits - before.Hits; n > 0 {
			r.Note = fmt.Sprintf("%.0f%% cache hits", 100*float64(after.CacheHits-before.CacheHits)/float64(n))
		}
		rows = append(rows, r)
	}
	return rows, nil
}

func missTargets(fx *fixture, g int) (subject, baseline func() (*target, error)) {
	ctx := context.Background()
	missing := func(w int, rs []*rand.Rand) string { return keyOf("miss-", rs[w].Uint64()) }
	subject = func() (*target, error) {
		rs := rngs(g)
		return &target{op: func(w int) error {
			if _, err := fx.store.Get(ctx, missing(w, rs)); !errors.Is(err, idem.ErrNotFound) {
				return fmt.Errorf("want ErrNotFound, got %v", err)
			}
			return nil
		}}, nil
	}
	baseline = func() (*target, error) {
		rs := rngs(g)
		return &target{op: func(w int) error {
			if _, err := rawGet(fx.db, missing(w, rs), time.Now()); !errors.Is(err, badger.ErrKeyNotFound) {
				return fmt.Errorf("want ErrKeyNotFound, got %v", err)
			}
			return nil
		}}, nil
	}
	return subject, baseline
}

func missRows(_ context.Context, e *env) ([]row, error) {
	fx, err := e.fx.get(e.records)
	if err != nil {
		return nil, err
	}
	const g = 2
	sub, base := missTargets(fx, g)
	r, err := compare(e, "get-miss", fmt.Sprintf("Get missing key, %s records, goroutines=%d", count(fx.n), g), g, nil, sub, base)
	return []row{r}, err
}

// freshKeys hands out keys never used before in the process: the sequence
// is shared, so targets built again over the same fixture (as Go's
// benchmark loop does) never meet an earlier target's keys.
type freshKeys struct{ prefix string }

var freshSeq atomic.Uint64

func (f *freshKeys) next() string { return keyOf(f.prefix, freshSeq.Add(1)) }

func openEmpty(e *env, name string, opts *idem.Options) (*idem.Store, func() error, error) {
	dir, err := e.tempDir(name)
	if err != nil {
		return nil, nil, err
	}
	s, err := idem.Open(dir, opts)
	if err != nil {
		return nil, nil, err
	}
	return s, func() error { return errors.Join(s.Close(), os.RemoveAll(dir)) }, nil
}

func openEmptyRaw(e *env, name string, syncWrites bool) (*badger.DB, func() error, error) {
	dir, err := e.tempDir(name)
	if err != nil {
		return nil, nil, err
	}
	db, err := openRaw(dir, syncWrites)
	if err != nil {
		return nil, nil, err
	}
	return db, func() error { return errors.Join(db.Close(), os.RemoveAll(dir)) }, nil
}

// beginOp claims a fresh key on s.
func beginOp(s *idem.Store) func(int) error {
	ctx := context.Background()
	keys := &freshKeys{prefix: "new-"}
	return func(int) error {
		k := keys.next()
		l, _, err := s.Begin(ctx, k, fingerprintOf(k))
		if err == nil && l == nil {
			err = fmt.Errorf("no lease on fresh key %q", k)
		}
		return err
	}
}

// embeddedBegin is Begin on fresh keys of a new, empty embedded store.
func embeddedBegin(e *env) func() (*target, error) {
	return func() (*target, error) {
		s, closeFn, err := openEmpty(e, "begin", &idem.Options{GCInterval: -1})
		if err != nil {
			return nil, err
		}
		return &target{close: closeFn, op: beginOp(s)}, nil
	}
}

func beginTargets(e *env) (subject, baseline func() (*target, error)) {
	subject = embeddedBegin(e)
	baseline = func() (*target, error) {
		db, closeFn, err := openEmptyRaw(e, "begin-raw", false)
		if err != nil {
			return nil, err
		}
		keys := &freshKeys{prefix: "new-"}
		return &target{close: closeFn, op: func(int) error {
			k := keys.next()
			created, err := rawCreate(db, k, time.Now())
			if err == nil && !created {
				err = fmt.Errorf("fresh key %q exists", k)
			}
			return err
		}}, nil
	}
	return subject, baseline
}

func beginRows(_ context.Context, e *env) ([]row, error) {
	const g = 16
	sub, base := beginTargets(e)
	r, err := compare(e, "begin", fmt.Sprintf("Begin fresh key, goroutines=%d", g), g, &goal{">=", 0.6, "x"}, sub, base)
	return []row{r}, err
}

func completeTargets(e *env, g int) (subject, baseline func() (*target, error)) {
	ctx := context.Background()
	subject = func() (*target, error) {
		s, closeFn, err := openEmpty(e, "complete", &idem.Options{GCInterval: -1})
		if err != nil {
			return nil, err
		}
		keys := &freshKeys{prefix: "new-"}
		leases := make([][]*idem.Lease, g)
		return &target{close: closeFn,
			prepare: func(w, n int) error {
				for range n {
					k := keys.next()
					l, _, err := s.Begin(ctx, k, fingerprintOf(k))
					if err != nil {
						return err
					}
					leases[w] = append(leases[w], l)
				}
				return nil
			},
			op: func(w int) error {
				l := leases[w][len(leases[w])-1]
				leases[w] = leases[w][:len(leases[w])-1]
				return l.Complete(ctx, response)
			}}, nil
	}
	baseline = func() (*target, error) {
		db, closeFn, err := openEmptyRaw(e, "complete-raw", true)
		if err != nil {
			return nil, err
		}
		keys := &freshKeys{prefix: "new-"}
		pending := make([][]string, g)
		return &target{close: closeFn,
			prepare: func(w, n int) error {
				for range n {
					k := keys.next()
					if _, err := rawCreate(db, k, time.Now()); err != nil {
						return err
					}
					pending[w] = append(pending[w], k)
				}
				return nil
			},
			op: func(w int) error {
				k := pending[w][len(pending[w])-1]
				pending[w] = pending[w][:len(pending[w])-1]
				return rawComplete(db, k, time.Now())
			}}, nil
	}
	return subject, baseline
}

func completeRows(_ context.Context, e *env) ([]row, error) {
	var rows []row
	for _, g := range []int{1, 16, 64} {
		var gl *goal
		if g == 64 {
			gl = &goal{">=", 5, "x"}
		}
		sub, base := completeTargets(e, g)
		r, err := compare(e, "complete", fmt.Sprintf("durable Complete, callers=%d", g), g, gl, sub, base)
		if err != nil {
			return rows, err
		}
		rows = append(rows, r)
	}
	return rows, nil
}

func mixedTargets(fx *fixture, g int) (subject, baseline func() (*target, error)) {
	ctx := context.Background()
	subject = func() (*target, error) {
		rs := rngs(g)
		keys := &freshKeys{prefix: "mix-idem-"}
		return &target{op: func(w int) error {
			if rs[w].IntN(10) > 0 {
				_, err := fx.store.Get(ctx, fx.keys[rs[w].IntN(len(fx.keys))])
				return err
			}
			k := keys.next()
			l, _, err := fx.store.Begin(ctx, k, fingerprintOf(k))
			if err != nil {
				return err
			}
			return l.Complete(ctx, response)
		}}, nil
	}
	baseline = func() (*target, error) {
		rs := rngs(g)
		keys := &freshKeys{prefix: "mix-raw-"}
		return &target{op: func(w int) error {
			if rs[w].IntN(10) > 0 {
				_, err := rawGet(fx.db, fx.keys[rs[w].IntN(len(fx.keys))], time.Now())
				return err
			}
			k := keys.next()
			if _, err := rawCreate(fx.db, k, time.Now()); err != nil {
				return err
			}
			if err := rawComplete(fx.db, k, time.Now()); err != nil {
				return err
			}
			// A raw Badger user opened without SyncWrites syncs by hand.
			return fx.db.Sync()
		}}, nil
	}
	return subject, baseline
}

func mixedRows(_ context.Context, e *env) ([]row, error) {
	fx, err := e.fx.get(e.records)
	if err != nil {
		return nil, err
	}
	const g = 16
	sub, base := mixedTargets(fx, g)
	r, err := compare(e, "mixed", fmt.Sprintf("mixed 90%% Get / 10%% Begin+durable Complete, %s records, goroutines=%d", count(fx.n), g), g, nil, sub, base)
	return []row{r}, err
}

// scaleSizes returns the record counts the scale rows measure: 100k, 1M
// and the run's -records when larger, never more than -records.
func scaleSizes(records int) []int {
	var sizes []int
	for _, n := range []int{100_000, 1_000_000, records} {
		if n <= records && !slices.Contains(sizes, n) {
			sizes = append(sizes, n)
		}
	}
	if len(sizes) == 1 {
		// A small run: compare with a tenth of the records.
		sizes = []int{max(records/10, 1000), records}
	}
	return sizes
}

func scaleRows(ctx context.Context, e *env) ([]row, error) {
	var (
		rows []row
		p50s []time.Duration
	)
	for _, n := range scaleSizes(e.records) {
		fx, err := e.fx.get(n)
		if err != nil {
			return rows, err
		}
		sub, _ := getTargets(fx, fx.store, fx.keys, 1)
		t, _ := sub()
		out, err := run([]*target{t}, 1, e.duration)
		if err != nil {
			return rows, err
		}
		res := out[0]
		p50s = append(p50s, res.P50)
		r := row{Workload: "scale", Operation: fmt.Sprintf("Get p50, %s records vs %s", count(n), count(scaleSizes(e.records)[0])),
			Subject: &res, Figure: float64(res.P50) / float64(p50s[0]), Unit: "x"}
		if len(p50s) > 1 {
			r.Goal = &goal{"<=", 2, "x"}
			if n < 10_000_000 {
				r.Note = "target is set for 10M records (-records 10000000)"
			}
		}
		r.judge()
		rows = append(rows, r)
	}
	return rows, nil
}

// reclaimTTL is how long the reclaim workload's records live. Badger
// expires entries by the wall clock in whole seconds, so the workload waits
// this long for real.
const reclaimTTL = 3 * time.Second

func reclaimRows(ctx context.Context, e *env) ([]row, error) {
	dir, err := e.tempDir("reclaim")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	n := e.records
	keys := make([]string, n)
	for i := range keys {
		keys[i] = keyOf("ttl-", uint64(i))
	}
	db := engineOf(s)
	if err := load(db, n, func(i int) string { return keys[i] }, reclaimTTL, newBar(e.progress, fmt.Sprintf("loading %s records to expire", count(n)), n)); err != nil {
		return nil, err
	}
	keys = nil
	if err := db.Sync(); err != nil {
		return nil, err
	}
	peak := badgerkv.DirUsage(dir)
	time.Sleep(reclaimTTL + 3*time.Second) // past the physical expiry, rounded up
	start := time.Now()
	after, runs := peak, 0
	for runs < 10 && after*5 > peak {
		rep, err := s.CollectGarbage(ctx)
		if err != nil {
			return nil, err
		}
		runs++
		after = badgerkv.DirUsage(dir)
		if rep.Records != 0 {
			return nil, fmt.Errorf("reclaim: %d records still live after their TTL", rep.Records)
		}
	}
	took := time.Since(start)
	r := row{Workload: "reclaim", Operation: fmt.Sprintf("disk after expiry of %s records, within 10 GC runs", count(n)),
		Figure: 100 * float64(after) / float64(max(peak, 1)), Unit: "%", Goal: &goal{"<=", 20, "%"},
		Note: fmt.Sprintf("peak %.1f MB, after %.1f MB, %d GC runs, %s", mb(peak), mb(after), runs, took.Round(time.Millisecond))}
	r.judge()
	return []row{r}, nil
}

func mb(b int64) float64 { return float64(b) / 1e6 }
