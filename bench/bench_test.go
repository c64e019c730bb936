package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/storeinternal"
)

// testFx holds the fixtures of the test binary, shared by every benchmark
// and removed by TestMain.
var testFx *fixtures

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		if err := runChild(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	flag.Parse()
	root, err := os.MkdirTemp("", "idem-bench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testFx = newFixtures(root, nil)
	code := m.Run()
	if err := testFx.close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

// reduced reports whether the run is a smoke run (-short, or a fixed
// count of at most 1000 iterations such as CI's -benchtime=100x), where
// the data sets shrink to 1% so the benchmarks only prove they still work.
func reduced() bool {
	if testing.Short() {
		return true
	}
	f := flag.Lookup("test.benchtime")
	if f == nil {
		return false
	}
	n, err := strconv.Atoi(strings.TrimSuffix(f.Value.String(), "x"))
	return err == nil && strings.HasSuffix(f.Value.String(), "x") && n <= 1000
}

// size scales a record count down in a reduced run.
func size(n int) int {
	if reduced() {
		return max(n/100, 1000)
	}
	return n
}

// benchEnv returns an env for the workloads that run their own timing
// (memory, reclaim).
func benchEnv(b *testing.B, records int) *env {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	return &env{records: records, duration: time.Second, fx: testFx, root: b.TempDir(),
		child: childRunner(exe, []string{"-test.run=^$"}), command: childCommand(exe, []string{"-test.run=^$"})}
}

// measure runs op b.N times spread over workers goroutines, and reports
// the p50 and p99 latency beside Go's ns/op.
func measure(b *testing.B, workers int, t *target) {
	b.Helper()
	if t.close != nil {
		b.Cleanup(func() {
			if err := t.close(); err != nil {
				b.Error(err)
			}
		})
	}
	if t.prepare != nil {
		// Hand each worker its share of the preparation up front.
		if err := parallel(workers, func(w int) error { return t.prepare(w, share(b.N, workers, w)) }); err != nil {
			b.Fatal(err)
		}
	}
	hists := make([]histogram, workers)
	b.ReportAllocs()
	b.ResetTimer()
	err := parallel(workers, func(w int) error {
		h := &hists[w]
		for range share(b.N, workers, w) {
			t0 := time.Now()
			if err := t.op(w); err != nil {
				return err
			}
			h.add(time.Since(t0))
		}
		return nil
	})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	var all histogram
	for i := range hists {
		all.merge(&hists[i])
	}
	b.ReportMetric(float64(all.quantile(0.5)), "p50-ns")
	b.ReportMetric(float64(all.quantile(0.99)), "p99-ns")
}

// share returns worker w's part of n operations.
func share(n, workers, w int) int {
	s := n / workers
	if w < n%workers {
		s++
	}
	return s
}

// pair runs subject as the store=idem sub-benchmark and baseline as the
// store=badger one beside it, with the same number of goroutines.
func pair(b *testing.B, workers int, subject, baseline func() (*target, error)) {
	pairNamed(b, workers, "store=idem", "store=badger", subject, baseline)
}

// pairNamed is pair with the two sub-benchmarks' names given.
func pairNamed(b *testing.B, workers int, subjectName, baselineName string, subject, baseline func() (*target, error)) {
	for _, side := range []struct {
		name string
		mk   func() (*target, error)
	}{{subjectName, subject}, {baselineName, baseline}} {
		b.Run(side.name, func(b *testing.B) {
			t, err := side.mk()
			if err != nil {
				b.Fatal(err)
			}
			measure(b, workers, t)
		})
	}
}

func benchFixture(b *testing.B, n int) *fixture {
	fx, err := testFx.get(n)
	if err != nil {
		b.Fatal(err)
	}
	return fx
}

// BenchmarkGet reads completed records, against raw Badger
// View+Get+msgpack.Unmarshal on the same database.
func BenchmarkGet(b *testing.B) {
	n := size(1_000_000)
	b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
		fx := benchFixture(b, n)
		for _, g := range []int{2, 16} {
			b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
				s, base := getTargets(fx, fx.store, fx.keys, g)
				pair(b, g, s, base)
			})
		}
	})
}

// BenchmarkGetCached reads a hot set of completed records through the read
// cache, against the same raw Badger read.
func BenchmarkGetCached(b *testing.B) {
	n := size(1_000_000)
	fx := benchFixture(b, n)
	s, err := idem.New(shared{storeinternal.Backend(fx.store).(idem.Backend)}, &idem.Options{CacheSize: cacheSize, GCInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	hot := fx.keys[:min(size(hotKeys), n)]
	for range 2 {
		for _, k := range hot {
			if _, err := s.Get(context.Background(), k); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Run(fmt.Sprintf("records=%d/hot=%d", n, len(hot)), func(b *testing.B) {
		for _, g := range []int{2, 16} {
			b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
				sub, base := getTargets(fx, s, hot, g)
				pair(b, g, sub, base)
			})
		}
	})
}

// BenchmarkGetMiss reads absent keys, against a raw Badger miss.
func BenchmarkGetMiss(b *testing.B) {
	n := size(1_000_000)
	b.Run(fmt.Sprintf("records=%d/goroutines=2", n), func(b *testing.B) {
		s, base := missTargets(benchFixture(b, n), 2)
		pair(b, 2, s, base)
	})
}

// BenchmarkBegin claims fresh keys, against a raw Badger create-if-absent
// transaction.
func BenchmarkBegin(b *testing.B) {
	b.Run("goroutines=16", func(b *testing.B) {
		s, base := beginTargets(benchEnv(b, 0))
		pair(b, 16, s, base)
	})
}

// BenchmarkComplete completes leases durably (SyncAlways, group commit),
// against Badger with SyncWrites doing one transaction per completion.
func BenchmarkComplete(b *testing.B) {
	for _, g := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("callers=%d", g), func(b *testing.B) {
			s, base := completeTargets(benchEnv(b, 0), g)
			pair(b, g, s, base)
		})
	}
}

// BenchmarkMixed is 90% Get of existing keys and 10% Begin+Complete.
func BenchmarkMixed(b *testing.B) {
	n := size(1_000_000)
	b.Run(fmt.Sprintf("records=%d/goroutines=16", n), func(b *testing.B) {
		s, base := mixedTargets(benchFixture(b, n), 16)
		pair(b, 16, s, base)
	})
}

// BenchmarkScale reads one record at a time from growing data sets; the
// p50-ns metric of the largest is judged against the smallest's.
func BenchmarkScale(b *testing.B) {
	for _, n := range scaleSizes(size(1_000_000)) {
		b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
			fx := benchFixture(b, n)
			s, _ := getTargets(fx, fx.store, fx.keys, 1)
			t, _ := s()
			measure(b, 1, t)
		})
	}
}

// BenchmarkMemory loads records into a fresh process with default options
// and reports its peak anonymous RSS. The load happens once, whatever b.N.
func BenchmarkMemory(b *testing.B) {
	n := size(1_000_000)
	b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
		rows, err := memoryRows(context.Background(), benchEnv(b, n))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(rows[0].Figure, "peak-anon-RSS-MB")
		b.ReportMetric(0, "ns/op")
	})
}

// BenchmarkReclaim loads records with a short TTL, waits for them to
// expire and runs CollectGarbage up to ten times, reporting disk use after
// as a percentage of the peak. The cycle runs once, whatever b.N.
func BenchmarkReclaim(b *testing.B) {
	n := size(200_000)
	b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
		rows, err := reclaimRows(context.Background(), benchEnv(b, n))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(rows[0].Figure, "after/peak-%")
		b.ReportMetric(0, "ns/op")
	})
}
