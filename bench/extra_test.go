//go:build unix

package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestReportRedisAndReplay runs the Redis and HTTP replay rows in quick
// mode: with redis-server on PATH every row is measured; without it the
// Redis rows say they were skipped and why.
func TestReportRedisAndReplay(t *testing.T) {
	if testing.Short() {
		t.Skip("loads a data set and starts redis-server")
	}
	_, lookErr := exec.LookPath("redis-server")
	table, doc, chart := report(t, "-quick", "-only", "redis,http-replay", "-duration", "50ms")
	ops := map[string]row{}
	for _, r := range doc.Rows {
		ops[r.Operation] = r
	}
	for _, op := range []string{
		"Get completed, embedded vs Redis, 20k records, goroutines=1",
		"Get completed, embedded vs Redis, 20k records, goroutines=2",
		"Get completed, embedded vs Redis, 20k records, goroutines=16",
		"Begin fresh key, embedded vs Redis, goroutines=16",
		"HTTP replay vs bare handler, loopback keep-alive, connections=1",
		"HTTP replay vs bare handler, loopback keep-alive, connections=16",
	} {
		r, ok := ops[op]
		if !ok {
			t.Errorf("no row %q in the JSON", op)
			continue
		}
		if !strings.Contains(table, op) {
			t.Errorf("table lacks %q:\n%s", op, table)
		}
		if r.Workload == "redis" && lookErr != nil {
			if !strings.Contains(r.Skipped, "redis-server is not on PATH") {
				t.Errorf("row %q: skipped %q, want the reason", op, r.Skipped)
			}
			continue
		}
		checkMeasured(t, r)
	}
	if len(doc.Rows) != 6 {
		t.Errorf("JSON has %d rows, want 6", len(doc.Rows))
	}
	for _, want := range []string{"(&gt;= 5.0x)", "(&gt;= 0.5x)", "embedded vs Redis", "HTTP replay"} {
		if !strings.Contains(chart, want) {
			t.Errorf("chart lacks %q", want)
		}
	}
	// Three Redis Get rows and two replay rows have targets; Begin has none.
	if n := strings.Count(chart, "<line "); n != 5 {
		t.Errorf("chart draws %d target ticks, want 5", n)
	}
}

// TestRedisSkippedWithoutServer hides redis-server: the rows are reported
// as skipped with the reason, in the table, the JSON and the chart, and
// the run succeeds; with IDEM_REQUIRE_REDIS=1 the run fails instead.
func TestRedisSkippedWithoutServer(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	t.Setenv("IDEM_REQUIRE_REDIS", "")
	table, doc, chart := report(t, "-quick", "-only", "redis")
	if len(doc.Rows) != 4 {
		t.Fatalf("JSON has %d rows, want 4", len(doc.Rows))
	}
	for _, r := range doc.Rows {
		if !strings.Contains(r.Skipped, "redis-server is not on PATH") || r.Subject != nil || r.Pass != nil {
			t.Errorf("row %q: want skipped with the reason and no measurement, got %+v", r.Operation, r)
		}
	}
	if !strings.Contains(table, "skipped") || !strings.Contains(table, "apt-get install redis-server") {
		t.Errorf("table does not say the rows were skipped and why:\n%s", table)
	}
	// Each Get row: its track and target tick, "skipped", and no bar.
	if strings.Count(chart, ">skipped (&gt;= 5.0x)<") != 3 || strings.Count(chart, "<rect ") != 3 {
		t.Errorf("chart does not show the three Get rows as skipped:\n%s", chart)
	}

	t.Setenv("IDEM_REQUIRE_REDIS", "1")
	var out, errOut strings.Builder
	if err := mainErr([]string{"-quick", "-only", "redis"}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "redis-server is not on PATH") {
		t.Errorf("with IDEM_REQUIRE_REDIS=1: err = %v, want one saying redis-server is missing", err)
	}
}
