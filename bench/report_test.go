package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	rs := rand.New(rand.NewPCG(1, 2))
	samples := make([]time.Duration, 100_000)
	for i := range samples {
		// Spread over five orders of magnitude, like latencies.
		samples[i] = time.Duration(float64(100) * float64(int64(1)<<rs.IntN(17)) * (1 + rs.Float64()))
		h.add(samples[i])
	}
	slices.Sort(samples)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		exact := samples[int(q*float64(len(samples)))]
		got := h.quantile(q)
		if ratio := float64(got) / float64(exact); ratio < 0.93 || ratio > 1.07 {
			t.Errorf("quantile(%v) = %v, exact %v: off by more than a bucket", q, got, exact)
		}
	}
	var empty histogram
	if got := empty.quantile(0.5); got != 0 {
		t.Errorf("empty histogram quantile = %v, want 0", got)
	}
}

func TestBucketsCoverEveryLatency(t *testing.T) {
	for _, ns := range []int64{0, 1, 15, 16, 17, 1000, 1 << 40, 1<<62 + 12345} {
		i := bucketOf(ns)
		if lo, hi := lowerBound(i), lowerBound(i+1); ns < lo || ns >= hi {
			t.Errorf("%d ns in bucket %d = [%d, %d)", ns, i, lo, hi)
		}
	}
}

// report runs the report with args plus -json and -svg files and returns
// the table, the JSON document and the chart.
func report(t *testing.T, args ...string) (table string, doc reportDoc, chart string) {
	t.Helper()
	dir := t.TempDir()
	jsonPath, svgPath := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.svg")
	var out, errOut bytes.Buffer
	if err := mainErr(append(args, "-json", jsonPath, "-svg", svgPath), &out, &errOut); err != nil {
		t.Fatalf("report: %v\n%s", err, errOut.String())
	}
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(svgPath)
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), doc, string(svg)
}

type reportDoc struct {
	Records int   `json:"records"`
	Rows    []row `json:"rows"`
}

// checkMeasured checks that a measured row has both sides, the ops/s
// ratio as its figure, and a verdict exactly when it has a goal.
func checkMeasured(t *testing.T, r row) {
	t.Helper()
	if r.Subject == nil || r.Baseline == nil || r.Subject.Ops == 0 || r.Baseline.Ops == 0 {
		t.Errorf("row %q lacks a measured side: %+v", r.Operation, r)
		return
	}
	if want := r.Subject.OpsPerS / r.Baseline.OpsPerS; r.Figure != want {
		t.Errorf("row %q: figure %v, want the ops/s ratio %v", r.Operation, r.Figure, want)
	}
	if (r.Goal != nil) != (r.Pass != nil) {
		t.Errorf("row %q: goal %v but pass %v", r.Operation, r.Goal, r.Pass)
	}
}

// TestReport runs the report in its quick mode on two workloads and checks
// the table, the JSON and the chart it writes.
func TestReport(t *testing.T) {
	if testing.Short() {
		t.Skip("loads a data set")
	}
	table, doc, chart := report(t, "-quick", "-only", "get,get-miss", "-duration", "50ms")
	for _, want := range []string{"ops/s", "Get completed, 20k records, goroutines=2", "Get missing key", ">= 1.0x"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	if doc.Records != 20_000 || len(doc.Rows) != 3 {
		t.Fatalf("JSON has %d records and %d rows, want 20000 and 3", doc.Records, len(doc.Rows))
	}
	for _, r := range doc.Rows {
		checkMeasured(t, r)
	}
	// The two Get rows have targets; the miss row has none and is not drawn.
	if n := strings.Count(chart, "<line "); n != 2 {
		t.Errorf("chart draws %d target ticks, want 2", n)
	}
}

func TestOnlyRejectsUnknownWorkload(t *testing.T) {
	var out, errOut bytes.Buffer
	err := mainErr([]string{"-only", "get,nope"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), `unknown workload "nope"`) {
		t.Fatalf("err = %v, want one naming the unknown workload", err)
	}
}
