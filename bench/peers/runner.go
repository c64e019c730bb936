package main

import (
	"context"
	"fmt"
	"math/bits"
	"runtime/pprof"
	"slices"
	"sync"
	"time"
)

// The runner is bench/runner.go's, cut down: this module cannot import
// the parent's command. Subject and baseline run in alternating rounds of
// about 20ms each, so whatever else the machine does falls on both.

// A target is one side of a comparison.
type target struct {
	// op runs one operation on worker w.
	op func(w int) error
	// check, when set, runs after the timed rounds and says whether the
	// side did what it claims (every first request ran the handler, no
	// replay did).
	check func() error
	// close releases what the target holds.
	close func() error
	// label, when set, is the pprof label "side" of the goroutines that
	// call op, so a CPU profile can be split by side.
	label string
}

// result is what one side measured.
type result struct {
	Ops     int64         `json:"ops"`
	Elapsed time.Duration `json:"elapsed_ns"`
	OpsPerS float64       `json:"ops_per_s"`
	P50     time.Duration `json:"p50_ns"`
	P99     time.Duration `json:"p99_ns"`
	// Rounds are the timed rounds in the order they ran, so that a row can
	// pair each round of one side with the other side's round next to it.
	Rounds []round `json:"rounds"`
}

// round is one timed round of one side.
type round struct {
	Ops  int64         `json:"ops"`
	Took time.Duration `json:"took_ns"`
}

func (r round) rate() float64 { return float64(r.Ops) / r.Took.Seconds() }

// histogram counts latencies in log-linear buckets: 16 buckets per power of
// two, so a percentile is exact to about 6%.
type histogram [64 * 16]uint64

func bucketOf(ns int64) int {
	if ns < 16 {
		return int(max(ns, 0))
	}
	e := 63 - bits.LeadingZeros64(uint64(ns))
	sub := (ns >> (e - 4)) & 15
	return (e-3)*16 + int(sub)
}

func lowerBound(i int) int64 {
	if i < 16 {
		return int64(i)
	}
	e := i/16 + 3
	sub := int64(i % 16)
	return (1 << e) | sub<<(e-4)
}

func (h *histogram) add(d time.Duration) { h[bucketOf(int64(d))]++ }

func (h *histogram) merge(o *histogram) {
	for i, n := range o {
		h[i] += n
	}
}

func (h *histogram) quantile(q float64) time.Duration {
	var total uint64
	for _, n := range h {
		total += n
	}
	if total == 0 {
		return 0
	}
	want := uint64(q*float64(total)) + 1
	var seen uint64
	for i, n := range h {
		seen += n
		if seen >= want {
			return time.Duration((lowerBound(i) + lowerBound(i+1)) / 2)
		}
	}
	return time.Duration(lowerBound(len(h) - 1))
}

// run measures each target with workers concurrent callers for about d of
// timed work each, taking the targets in turn round by round. A target's
// round grows until it lasts about 20ms.
func run(ts []*target, workers int, d time.Duration) ([]result, error) {
	type state struct {
		hists    []histogram
		res      result
		perRound int
	}
	st := make([]state, len(ts))
	for i := range st {
		st[i] = state{hists: make([]histogram, workers), perRound: 4}
	}
	for busy := true; busy; {
		busy = false
		for i, t := range ts {
			s := &st[i]
			if s.res.Elapsed >= d {
				continue
			}
			busy = true
			start := time.Now()
			err := parallel(workers, func(w int) error {
				if t.label != "" {
					pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("side", t.label)))
				}
				h := &s.hists[w]
				for range s.perRound {
					t0 := time.Now()
					if err := t.op(w); err != nil {
						return err
					}
					h.add(time.Since(t0))
				}
				return nil
			})
			took := time.Since(start)
			if err != nil {
				return nil, err
			}
			s.res.Elapsed += took
			s.res.Ops += int64(s.perRound * workers)
			s.res.Rounds = append(s.res.Rounds, round{int64(s.perRound * workers), took})
			if took < 20*time.Millisecond && s.perRound < 1<<20 {
				s.perRound *= 2
			}
		}
	}
	out := make([]result, len(ts))
	for i := range st {
		s := &st[i]
		var all histogram
		for j := range s.hists {
			all.merge(&s.hists[j])
		}
		r := s.res
		r.OpsPerS = float64(r.Ops) / r.Elapsed.Seconds()
		r.P50 = all.quantile(0.50)
		r.P99 = all.quantile(0.99)
		out[i] = r
	}
	return out, nil
}

// pairRatios returns the throughput ratio of each round of sub to the
// round of base that ran next to it, sorted. Pairs with a round shorter
// than 10ms (the first rounds, while their size still grows, pay the
// barrier between rounds more than the rest) are left out unless no pair
// is longer.
func pairRatios(sub, base []round) []float64 {
	var all, long []float64
	for i := range min(len(sub), len(base)) {
		r := sub[i].rate() / base[i].rate()
		all = append(all, r)
		if min(sub[i].Took, base[i].Took) >= 10*time.Millisecond {
			long = append(long, r)
		}
	}
	if len(long) > 0 {
		all = long
	}
	slices.Sort(all)
	return all
}

// quantileOf returns the q-quantile of sorted, by nearest rank.
func quantileOf(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted)-1) + 0.5)
	return sorted[i]
}

// parallel runs fn for workers 0..n-1 at once and returns the first error.
func parallel(n int, fn func(w int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(w); err != nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("worker %d: %w", w, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}
