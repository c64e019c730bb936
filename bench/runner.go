package main

import (
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"time"
)

// A target is one side of a comparison: the operation run by every worker,
// and, when set, untimed preparation run before each timed round (Complete
// needs leases that Begin handed out beforehand).
type target struct {
	// op runs one operation on worker w.
	op func(w int) error
	// prepare readies worker w for its next n calls of op, outside the timer.
	prepare func(w, n int) error
	// close releases what the target holds, after its run.
	close func() error
}

// result is what one run of a target measured.
type result struct {
	Ops      int64         `json:"ops"`
	Elapsed  time.Duration `json:"elapsed_ns"` // timed wall time, preparation excluded
	OpsPerS  float64       `json:"ops_per_s"`
	P50      time.Duration `json:"p50_ns"`
	P99      time.Duration `json:"p99_ns"`
	AllocsOp float64       `json:"allocs_per_op"` // whole process, timed rounds only
}

// histogram counts latencies in log-linear buckets: 16 buckets per power of
// two, so a percentile is exact to about 6%, with no allocation per sample.
type histogram [64 * 16]uint64

func bucketOf(ns int64) int {
	if ns < 16 {
		return int(max(ns, 0))
	}
	e := 63 - bits.LeadingZeros64(uint64(ns)) // 2^e <= ns
	sub := (ns >> (e - 4)) & 15
	return (e-3)*16 + int(sub)
}

// lowerBound returns the smallest latency bucket i holds.
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

// quantile returns the latency below which fraction q of the samples lie.
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
			// The middle of the bucket.
			return time.Duration((lowerBound(i) + lowerBound(i+1)) / 2)
		}
	}
	return time.Duration(lowerBound(len(h) - 1))
}

// run measures each target with the given number of workers for about d
// of timed work each. It runs in rounds, taking the targets in turn, so
// that whatever else the machine does (Badger compacting, other processes)
// falls on all of them alike. In a round, every worker prepares (untimed),
// then all run the round's operations together while the clock runs. A
// target's round size grows until its round lasts about 20ms, so the
// barrier costs little.
func run(ts []*target, workers int, d time.Duration) ([]result, error) {
	type state struct {
		hists    []histogram
		res      result
		perRound int
		mallocs  uint64
	}
	st := make([]state, len(ts))
	for i := range st {
		st[i] = state{hists: make([]histogram, workers), perRound: 8}
	}
	var ms0, ms1 runtime.MemStats
	for busy := true; busy; {
		busy = false
		for i, t := range ts {
			s := &st[i]
			if s.res.Elapsed >= d {
				continue
			}
			busy = true
			if t.prepare != nil {
				if err := parallel(workers, func(w int) error { return t.prepare(w, s.perRound) }); err != nil {
					return nil, err
				}
			}
			runtime.ReadMemStats(&ms0)
			start := time.Now()
			err := parallel(workers, func(w int) error {
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
			runtime.ReadMemStats(&ms1)
			if err != nil {
				return nil, err
			}
			s.mallocs += ms1.Mallocs - ms0.Mallocs
			s.res.Elapsed += took
			s.res.Ops += int64(s.perRound * workers)
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
		r.AllocsOp = float64(s.mallocs) / float64(r.Ops)
		out[i] = r
	}
	return out, nil
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
