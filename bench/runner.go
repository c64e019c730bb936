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

// run measures t with the given number of workers for about d of timed
// work. It runs in rounds: every worker prepares (untimed), then all run
// their round's operations together while the clock runs. The round size
// grows until a round lasts about 20ms, so the barrier costs little.
func run(t *target, workers int, d time.Duration) (result, error) {
	hists := make([]histogram, workers)
	var (
		res      result
		perRound = 8
		ms0, ms1 runtime.MemStats
		mallocs  uint64
	)
	for res.Elapsed < d {
		if t.prepare != nil {
			if err := parallel(workers, func(w int) error { return t.prepare(w, perRound) }); err != nil {
				return res, err
			}
		}
		runtime.ReadMemStats(&ms0)
		start := time.Now()
		err := parallel(workers, func(w int) error {
			h := &hists[w]
			for range perRound {
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
			return res, err
		}
		mallocs += ms1.Mallocs - ms0.Mallocs
		res.Elapsed += took
		res.Ops += int64(perRound * workers)
		if took < 20*time.Millisecond && perRound < 1<<20 {
			perRound *= 2
		}
	}
	var all histogram
	for i := range hists {
		all.merge(&hists[i])
	}
	res.OpsPerS = float64(res.Ops) / res.Elapsed.Seconds()
	res.P50 = all.quantile(0.50)
	res.P99 = all.quantile(0.99)
	res.AllocsOp = float64(mallocs) / float64(res.Ops)
	return res, nil
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
