package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/badgerkv"
)

// memLimit is the memory limit the scale-limited workload reads under: a
// cgroup v1 memory.limit_in_bytes, which counts the process's anonymous
// memory and the page cache it brings in (its mapped tables) together.
const memLimit = 256 << 20

func init() {
	registerOptIn(workload{"scale-limited", "Get p50 at -records under a 256 MiB cgroup memory limit vs 100k without (opt-in; Linux, root, cgroup v1)", limitedRows})
}

// getStats is what the get child reports.
type getStats struct {
	Result      result   `json:"result"`
	Mem         memStats `json:"mem"` // sampled from the open to the end of the timing
	MajFaultsOp float64  `json:"major_faults_per_op"`
	CacheHitPct float64  `json:"cache_hit_pct"`
	OpenS       float64  `json:"open_s"` // open and settle
	WarmS       float64  `json:"warm_s"` // one pass over every record
	Cgroup      string   `json:"cgroup"` // the process's memory cgroup
}

// cgroupStats is what the parent reads from the limited child's cgroup
// after the child exits.
type cgroupStats struct {
	Path       string
	MaxUsage   int64 // memory.max_usage_in_bytes: anonymous + page cache charged to the cgroup
	Failcnt    int64 // memory.failcnt: charges the limit refused
	OOMKills   int64
	LimitBytes int64
}

func limitedRows(_ context.Context, e *env) ([]row, error) {
	sizes := scaleSizes(e.records)
	base, big := sizes[0], sizes[len(sizes)-1]
	op := fmt.Sprintf("Get p50, %s records under a %d MiB memory limit vs %s without", count(big), memLimit>>20, count(base))
	if reason := cgroupUnavailable(); reason != "" {
		return []row{{Workload: "scale-limited", Operation: op, Unit: "x", Goal: &goal{"<=", 2, "x"}, Skipped: reason}}, nil
	}
	b, _, err := getChild(e, base, false)
	if err != nil {
		return nil, err
	}
	rows := []row{{Workload: "scale-limited", Operation: fmt.Sprintf("Get p50, %s records, no memory limit", count(base)),
		Subject: &b.Result, Figure: 1, Unit: "x",
		Note: fmt.Sprintf("fresh process, default options (GC loop off); %.0f%% read-cache hits; %.2f major faults per Get; peak anon %d MB, mapped tables %d MB",
			b.CacheHitPct, b.MajFaultsOp, b.Mem.PeakAnonKB/1024, b.Mem.PeakFileKB/1024)}}
	l, cg, err := getChild(e, big, true)
	if err != nil {
		return rows, err
	}
	r := row{Workload: "scale-limited", Operation: op, Subject: &l.Result,
		Figure: float64(l.Result.P50) / float64(b.Result.P50), Unit: "x", Goal: &goal{"<=", 2, "x"},
		Note: fmt.Sprintf("p99 %s vs %s (%.2fx); cgroup v1 %s, limit %d MiB: peak usage %d MB (anonymous + page cache charged), memory.failcnt %d, %d OOM kills; "+
			"in the process: peak anon %d MB, mapped tables at most %d MB; %.2f major faults per Get; %.1f%% read-cache hits; warm pass %.0fs",
			dur(l.Result.P99), dur(b.Result.P99), float64(l.Result.P99)/float64(b.Result.P99), cg.Path, cg.LimitBytes>>20, cg.MaxUsage>>20,
			cg.Failcnt, cg.OOMKills, l.Mem.PeakAnonKB/1024, l.Mem.PeakFileKB/1024, l.MajFaultsOp, l.CacheHitPct, l.WarmS)}
	r.judge()
	return append(rows, r), nil
}

// getChild writes n records (WriteBatch, then reopened and settled as the
// fixtures are), drops their pages from the page cache, and measures Get
// in a fresh process, inside a memory cgroup when limited.
func getChild(e *env, n int, limited bool) (getStats, cgroupStats, error) {
	var (
		st getStats
		cg cgroupStats
	)
	dir, err := e.tempDir("limited")
	if err != nil {
		return st, cg, err
	}
	defer os.RemoveAll(dir)
	if err := prepareData(dir, n, e.progress); err != nil {
		return st, cg, err
	}
	// The pages the load brought in are charged to this process's cgroup;
	// left in the page cache, the child would read them without its limit
	// counting them.
	if err := evictPageCache(dir); err != nil {
		return st, cg, err
	}
	if e.progress != nil {
		how := "without a memory limit"
		if limited {
			how = fmt.Sprintf("under a %d MiB memory limit", memLimit>>20)
		}
		fmt.Fprintf(e.progress, "scale-limited: Get on %s records in a fresh process, %s\n", count(n), how)
	}
	cmd := e.command(childEnv+"=get", "IDEM_BENCH_DIR="+dir, fmt.Sprintf("IDEM_BENCH_RECORDS=%d", n),
		"IDEM_BENCH_DURATION="+e.duration.String())
	var out []byte
	if limited {
		out, cg, err = runLimited(cmd, memLimit)
	} else {
		out, err = cmd.Output()
	}
	if err != nil {
		return st, cg, fmt.Errorf("get child: %w", err)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, cg, fmt.Errorf("get child: %w (output %q)", err, out)
	}
	return st, cg, nil
}

// prepareData writes n completed records into a store at dir and leaves it
// closed, compacted and settled.
func prepareData(dir string, n int, progress io.Writer) error {
	opts := &idem.Options{GCInterval: -1}
	s, err := idem.Open(dir, opts)
	if err != nil {
		return err
	}
	if err := load(engineOf(s), n, func(i int) string { return keyOf("req-", uint64(i)) }, 24*time.Hour,
		newBar(progress, fmt.Sprintf("loading %s records", count(n)), n)); err != nil {
		s.Close()
		return err
	}
	if err := s.Close(); err != nil {
		return err
	}
	if s, err = idem.Open(dir, opts); err != nil {
		return err
	}
	settle(engineOf(s), 2*time.Minute)
	return s.Close()
}

// runGetChild is the scale-limited workload's child: it waits for the
// parent to place it in its cgroup (a byte on stdin), opens the store with
// default options (the background GC loop off, as the fixtures have it),
// lets compactions settle, reads every record once (a running service has
// its tables paged in, as far as its memory allows), then times Get of
// random keys, one at a time, for IDEM_BENCH_DURATION. Keys are made on the
// fly: a slice of 10M keys would take 400 MB.
func runGetChild(w io.Writer) error {
	dir := os.Getenv("IDEM_BENCH_DIR")
	var n int
	if _, err := fmt.Sscan(os.Getenv("IDEM_BENCH_RECORDS"), &n); err != nil || n <= 0 || dir == "" {
		return fmt.Errorf("get child: need IDEM_BENCH_DIR and IDEM_BENCH_RECORDS > 0")
	}
	d, err := time.ParseDuration(os.Getenv("IDEM_BENCH_DURATION"))
	if err != nil {
		return fmt.Errorf("get child: IDEM_BENCH_DURATION: %w", err)
	}
	if os.Getenv("IDEM_BENCH_WAIT") != "" {
		var b [1]byte
		if _, err := io.ReadFull(os.Stdin, b[:]); err != nil {
			return fmt.Errorf("get child: waiting to be placed in the cgroup: %w", err)
		}
	}
	var st getStats
	st.Cgroup = memoryCgroup()
	if want := os.Getenv("IDEM_BENCH_CGROUP"); want != "" && !strings.HasSuffix(st.Cgroup, want) {
		return fmt.Errorf("get child: in memory cgroup %q, want %q", st.Cgroup, want)
	}
	smp := startSampler(50*time.Millisecond, "")
	start := time.Now()
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	if err != nil {
		return err
	}
	defer s.Close()
	db := engineOf(s)
	settle(db, 2*time.Minute)
	st.OpenS = time.Since(start).Seconds()
	start = time.Now()
	if err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
		}
		return nil
	}); err != nil {
		return err
	}
	st.WarmS = time.Since(start).Seconds()
	ctx := context.Background()
	rs := rand.New(rand.NewPCG(7, 42))
	t := &target{op: func(int) error {
		_, err := s.Get(ctx, keyOf("req-", uint64(rs.IntN(n))))
		return err
	}}
	before, f0 := s.Stats(), majorFaults()
	res, err := run([]*target{t}, 1, d)
	if err != nil {
		return err
	}
	after, f1 := s.Stats(), majorFaults()
	st.Result = res[0]
	st.MajFaultsOp = float64(f1-f0) / float64(st.Result.Ops)
	if h := after.Hits - before.Hits; h > 0 {
		st.CacheHitPct = 100 * float64(after.CacheHits-before.CacheHits) / float64(h)
	}
	if err := smp.finish(&st.Mem); err != nil {
		return err
	}
	end, err := readStatus()
	if err != nil {
		return err
	}
	st.Mem.HWMKB, st.Mem.RSSKB, st.Mem.AnonKB, st.Mem.FileKB = end.HWMKB, end.RSSKB, end.AnonKB, end.FileKB
	st.Mem.Records, st.Mem.DiskKB = n, badgerkv.DirUsage(dir)/1024
	return json.NewEncoder(w).Encode(st)
}

// memoryCgroup returns this process's cgroup v1 memory path, or "".
func memoryCgroup() string {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && containsField(parts[1], "memory") {
			return parts[2]
		}
	}
	return ""
}

func containsField(list, name string) bool {
	for _, f := range strings.Split(list, ",") {
		if f == name {
			return true
		}
	}
	return false
}

// readInt reads a file holding one decimal number.
func readInt(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var v int64
	_, err = fmt.Sscan(string(bytes.TrimSpace(data)), &v)
	return v, err
}
