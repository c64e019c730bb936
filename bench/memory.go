package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/badgerkv"
	"github.com/idemdb/idem/internal/storeinternal"
)

// anonGoalMB is the memory target: the process's anonymous resident
// memory (Go heap, Badger's memtables and table builders, the read cache,
// stacks) while it loads and reads the records with default options. The
// mapped tables (page cache the kernel can take back) are reported beside
// it, not judged.
const anonGoalMB = 128

// memStats is what the memory child reports. Sizes are in KiB, as
// /proc/self/status gives them.
type memStats struct {
	Records int `json:"records"`
	// Sampled every 50ms during the load and the read-back.
	PeakAnonKB   int64 `json:"peak_rss_anon_kb"`
	FileAtPeakKB int64 `json:"rss_file_at_peak_anon_kb"` // mapped file pages when the anonymous peak was seen
	PeakFileKB   int64 `json:"peak_rss_file_kb"`
	Samples      int   `json:"samples"`
	// The Go runtime's view at the anonymous peak: the heap live at the
	// last GC, heap objects (live and not yet collected), and all memory
	// the runtime holds from the OS (heap, stacks, metadata) less what it
	// released.
	PeakHeapLiveKB    int64 `json:"peak_heap_live_kb"`
	PeakHeapObjectsKB int64 `json:"peak_heap_objects_kb"`
	PeakGoHeldKB      int64 `json:"peak_go_held_kb"`
	// At the end.
	HWMKB  int64 `json:"vm_hwm_kb"` // peak of anonymous + file-backed RSS together
	RSSKB  int64 `json:"vm_rss_kb"`
	AnonKB int64 `json:"rss_anon_kb"`
	FileKB int64 `json:"rss_file_kb"`

	LoadS  float64 `json:"load_s"`
	ReadS  float64 `json:"read_s"`
	DiskKB int64   `json:"disk_kb"` // the data directory's size at the end
	Loader string  `json:"loader"`  // which write path loaded the records
}

func memoryRows(_ context.Context, e *env) ([]row, error) {
	dir, err := e.tempDir("memory")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out, err := e.child(childEnv+"=memory", "IDEM_BENCH_DIR="+filepath.Join(dir, "db"), fmt.Sprintf("IDEM_BENCH_RECORDS=%d", e.records))
	if err != nil {
		return nil, err
	}
	var m memStats
	if err := json.Unmarshal(out, &m); err != nil {
		return nil, fmt.Errorf("memory child: %w (output %q)", err, out)
	}
	r := row{Workload: "memory", Operation: fmt.Sprintf("peak anonymous RSS, %s records, default options", count(e.records)),
		Figure: float64(m.PeakAnonKB) / 1024, Unit: "MB", Goal: &goal{"<=", anonGoalMB, "MB"},
		Note: fmt.Sprintf("mapped tables (RssFile, not judged) %d MB at the anonymous peak, %d MB at most, %d MB at the end; "+
			"at the anonymous peak the Go runtime held %d MB (heap live at the last GC %d MB, heap objects %d MB); "+
			"VmHWM (anon + file) %d MB; at the end anon %d MB; data on disk %d MB; loaded in %.1fs through %s, %s Gets in %.1fs; %d samples",
			m.FileAtPeakKB/1024, m.PeakFileKB/1024, m.FileKB/1024, m.PeakGoHeldKB/1024, m.PeakHeapLiveKB/1024, m.PeakHeapObjectsKB/1024, m.HWMKB/1024, m.AnonKB/1024, m.DiskKB/1024, m.LoadS, m.Loader, count(min(m.Records, 100_000)), m.ReadS, m.Samples)}
	r.judge()
	return []row{r}, nil
}

// childEnv names the environment variable that makes this program (or the
// test binary) run as a child process instead: "memory" for the memory
// workload, "get" for the scale-limited one.
const childEnv = "IDEM_BENCH_CHILD"

// runChild runs the child process named by childEnv.
func runChild(w io.Writer) error {
	switch v := os.Getenv(childEnv); v {
	case "memory":
		return runMemoryChild(w)
	case "get":
		return runGetChild(w)
	default:
		return fmt.Errorf("%s=%q: want memory or get", childEnv, v)
	}
}

// sampler reads /proc/self/status at a fixed interval and keeps the peak
// anonymous RSS, with the file-backed RSS of that moment, and the peak
// file-backed RSS.
type sampler struct {
	stop chan struct{}
	done chan struct{}

	// profile, when set, is where a heap profile is written each time the
	// anonymous peak grows by 8 MiB or more.
	profile string

	mu                             sync.Mutex
	peakAnon, fileAtPeak, peakFile int64
	profiled                       int64
	goAtPeak                       [3]int64
	n                              int
	err                            error
}

var goMetrics = []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"},
	{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}

func startSampler(every time.Duration, profile string) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{}), profile: profile}
	s.sample()
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.sample()
			}
		}
	}()
	return s
}

func (s *sampler) sample() {
	m, err := readStatus()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.err = err
		return
	}
	s.n++
	if m.AnonKB > s.peakAnon {
		s.peakAnon, s.fileAtPeak = m.AnonKB, m.FileKB
		ms := slices.Clone(goMetrics)
		metrics.Read(ms)
		s.goAtPeak = [3]int64{int64(ms[0].Value.Uint64()) >> 10, int64(ms[1].Value.Uint64()) >> 10,
			int64(ms[2].Value.Uint64()-ms[3].Value.Uint64()) >> 10}
		if s.profile != "" && m.AnonKB >= s.profiled+8<<10 {
			s.profiled = m.AnonKB
			if err := writeHeapProfile(s.profile + ".peak"); err != nil {
				s.err = err
			}
		}
	}
	s.peakFile = max(s.peakFile, m.FileKB)
}

// finish takes a last sample, stops the sampler and puts its figures in m.
func (s *sampler) finish(m *memStats) error {
	close(s.stop)
	<-s.done
	s.sample()
	s.mu.Lock()
	defer s.mu.Unlock()
	m.PeakAnonKB, m.FileAtPeakKB, m.PeakFileKB, m.Samples = s.peakAnon, s.fileAtPeak, s.peakFile, s.n
	m.PeakHeapLiveKB, m.PeakHeapObjectsKB, m.PeakGoHeldKB = s.goAtPeak[0], s.goAtPeak[1], s.goAtPeak[2]
	return s.err
}

// runMemoryChild is the memory workload's child: a fresh process that
// opens a store with default options (nil: the 8 MiB read cache, the
// background GC loop), loads the records through the store's write path
// (the backend's compare-and-swap, one transaction per record, 16 at a
// time), reads 100k of them back with Get, and prints its memory figures
// as JSON, sampled every 50ms throughout.
func runMemoryChild(w io.Writer) error {
	dir := os.Getenv("IDEM_BENCH_DIR")
	var n int
	if _, err := fmt.Sscan(os.Getenv("IDEM_BENCH_RECORDS"), &n); err != nil || n <= 0 || dir == "" {
		return fmt.Errorf("memory child: need IDEM_BENCH_DIR and IDEM_BENCH_RECORDS > 0")
	}
	smp := startSampler(50*time.Millisecond, os.Getenv("IDEM_BENCH_MEMPROFILE"))
	s, err := idem.Open(dir, nil)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := context.Background()
	start := time.Now()
	b := storeinternal.Backend(s).(idem.Backend)
	const g = 16
	var next atomic.Int64
	err = parallel(g, func(int) error {
		for {
			i := next.Add(1) - 1
			if i >= int64(n) {
				return nil
			}
			k := keyOf("req-", uint64(i))
			now := time.Now()
			if _, _, err := b.CompareAndSwap(ctx, k, nil, completedRecord(k, now, 24*time.Hour), now.Add(24*time.Hour), false); err != nil {
				return err
			}
		}
	})
	if err != nil {
		return err
	}
	load := time.Since(start)
	start = time.Now()
	rs := rand.New(rand.NewPCG(1, 2))
	for range min(n, 100_000) {
		k := keyOf("req-", uint64(rs.IntN(n)))
		if _, err := s.Get(ctx, k); err != nil {
			return err
		}
	}
	read := time.Since(start)
	var st memStats
	if err := smp.finish(&st); err != nil {
		return err
	}
	end, err := readStatus()
	if err != nil {
		return err
	}
	st.HWMKB, st.RSSKB, st.AnonKB, st.FileKB = end.HWMKB, end.RSSKB, end.AnonKB, end.FileKB
	if path := os.Getenv("IDEM_BENCH_MEMPROFILE"); path != "" {
		if err := writeHeapProfile(path); err != nil {
			return err
		}
	}
	st.Records, st.LoadS, st.ReadS, st.DiskKB = n, load.Seconds(), read.Seconds(), badgerkv.DirUsage(dir)/1024
	st.Loader = "the store's write path (CompareAndSwap, 16 at a time)"
	return json.NewEncoder(w).Encode(st)
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readStatus reads the memory figures of this process from
// /proc/self/status.
func readStatus() (memStats, error) {
	var m memStats
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return m, fmt.Errorf("memory: %w (the memory workload needs Linux)", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var kb int64
		fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(val), " kB"), &kb)
		switch name {
		case "VmHWM":
			m.HWMKB = kb
		case "VmRSS":
			m.RSSKB = kb
		case "RssAnon":
			m.AnonKB = kb
		case "RssFile":
			m.FileKB = kb
		}
	}
	return m, nil
}
