package idemprom_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemprom"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/storeinternal"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	fpA = []byte("A")
	fpB = []byte("B")
)

// fixture opens a Badger store on disk with an injected clock and a
// Latency observer.
func fixture(t *testing.T) (*idem.Store, *idemtest.Clock, *idemprom.Latency) {
	t.Helper()
	clk := idemtest.NewClock()
	lat := idemprom.NewLatency()
	s, err := idem.Open(t.TempDir(), &idem.Options{
		LeaseTTL: 30 * time.Second, GCInterval: -1, Now: clk.Now, Observer: lat,
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s, clk, lat
}

// knownSequence runs a fixed sequence of operations on s.
func knownSequence(t *testing.T, s *idem.Store, clk *idemtest.Clock) {
	ctx := context.Background()
	l, _, err := s.Begin(ctx, "t1/a", fpA)
	require.NoError(t, err)
	require.NoError(t, l.Complete(ctx, []byte("ok")))
	_, _, err = s.Begin(ctx, "t1/a", fpA) // replay
	require.NoError(t, err)
	_, _, err = s.Begin(ctx, "t1/a", fpB) // mismatch
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	stuck, _, err := s.Begin(ctx, "t1/stuck", fpA) // will go stale
	require.NoError(t, err)
	_, _, err = s.Begin(ctx, "t1/stuck", fpA) // in progress
	require.ErrorIs(t, err, idem.ErrInProgress)
	l, _, err = s.Begin(ctx, "t2/f", fpA)
	require.NoError(t, err)
	require.NoError(t, l.Fail(ctx, nil, false))
	_, err = s.Get(ctx, "t1/a")
	require.NoError(t, err)
	_, err = s.Get(ctx, "nope")
	require.ErrorIs(t, err, idem.ErrNotFound)
	clk.Advance(40 * time.Second) // t1/stuck's lease lapses
	_, _, err = s.Begin(ctx, "t2/live", fpA)
	require.NoError(t, err)
	_, swapped, err := storeinternal.Backend(s).(idem.Backend).CompareAndSwap(ctx, "t3/bad", nil, []byte{0xc1}, time.Now().Add(time.Hour), false)
	require.NoError(t, err)
	require.True(t, swapped)
	clk.Advance(5 * time.Second)
	require.NoError(t, stuck.Extend(ctx, time.Minute), "no takeover yet: the holder may still extend")
	clk.Advance(2 * time.Minute) // and lapse again
}

func TestCollectorCounters(t *testing.T) {
	s, clk, _ := fixture(t)
	knownSequence(t, s, clk)
	c := idemprom.NewCollector(s, nil)
	want := `
# HELP idem_requests_total Begin calls by outcome, and lease steps refused by fencing (lease-lost).
# TYPE idem_requests_total counter
idem_requests_total{outcome="in-progress"} 1
idem_requests_total{outcome="lease"} 4
idem_requests_total{outcome="lease-lost"} 0
idem_requests_total{outcome="mismatch"} 1
idem_requests_total{outcome="replay"} 1
# HELP idem_gets_total Get calls by result.
# TYPE idem_gets_total counter
idem_gets_total{result="hit"} 1
idem_gets_total{result="miss"} 1
# HELP idem_leases_ended_total Leases ended by their holder, by how.
# TYPE idem_leases_ended_total counter
idem_leases_ended_total{how="completed"} 1
idem_leases_ended_total{how="failed"} 1
idem_leases_ended_total{how="released"} 0
# HELP idem_records Live records by state, at the last census.
# TYPE idem_records gauge
idem_records{state="completed"} 1
idem_records{state="failed"} 1
idem_records{state="in-progress"} 2
# HELP idem_records_corrupt Records that cannot be decoded, at the last census.
# TYPE idem_records_corrupt gauge
idem_records_corrupt 1
# HELP idem_stale_leases In-progress records whose lease has lapsed with no takeover, at the last census.
# TYPE idem_stale_leases gauge
idem_stale_leases 2
# HELP idem_oldest_in_progress_age_seconds Age of the oldest in-progress record, at the last census (0 when none).
# TYPE idem_oldest_in_progress_age_seconds gauge
idem_oldest_in_progress_age_seconds 165
# HELP idem_census_truncated 1 when the last census stopped at its scan limit, so the record gauges are lower bounds.
# TYPE idem_census_truncated gauge
idem_census_truncated 0
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want),
		"idem_requests_total", "idem_gets_total", "idem_leases_ended_total", "idem_records",
		"idem_records_corrupt", "idem_stale_leases", "idem_oldest_in_progress_age_seconds", "idem_census_truncated"))

	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

func TestCollectorTakeoverAndGC(t *testing.T) {
	ctx := context.Background()
	s, clk, _ := fixture(t)
	knownSequence(t, s, clk)
	c := idemprom.NewCollector(s, &idemprom.Options{ScanInterval: time.Nanosecond})
	l, _, err := s.Begin(ctx, "t1/stuck", fpA) // takeover
	require.NoError(t, err)
	require.NotNil(t, l)
	assert.Equal(t, 1.0, testutil.ToFloat64(collectOne(c, "idem_takeovers_total")))
	assert.Equal(t, 1.0, testutil.ToFloat64(collectOne(c, "idem_stale_leases")), "t2/live is still stale")

	assert.Equal(t, 0.0, testutil.ToFloat64(collectOne(c, "idem_gc_runs_total")))
	_, err = s.CollectGarbage(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1.0, testutil.ToFloat64(collectOne(c, "idem_gc_runs_total")))
	assert.Equal(t, 1.0, testutil.ToFloat64(collectOne(c, "idem_sweeps_total")))
	assert.Greater(t, testutil.ToFloat64(collectOne(c, "idem_disk_bytes")), 0.0)
}

func TestCollectorCensusIsReusedAndBounded(t *testing.T) {
	ctx := context.Background()
	s, clk, _ := fixture(t)
	knownSequence(t, s, clk)
	c := idemprom.NewCollector(s, &idemprom.Options{ScanInterval: time.Hour})
	records := func() float64 { return testutil.ToFloat64(collectOne(c, "idem_records", "in-progress")) }
	assert.Equal(t, 2.0, records())
	_, _, err := s.Begin(ctx, "t9/new", fpA)
	require.NoError(t, err)
	assert.Equal(t, 2.0, records(), "the census is reused within ScanInterval")
	assert.Equal(t, 3.0, testutil.ToFloat64(collectOne(idemprom.NewCollector(s, nil), "idem_records", "in-progress")))

	small := idemprom.NewCollector(s, &idemprom.Options{ScanLimit: 2})
	assert.Equal(t, 1.0, testutil.ToFloat64(collectOne(small, "idem_census_truncated")))
	off := idemprom.NewCollector(s, &idemprom.Options{ScanLimit: -1})
	assert.Equal(t, 0, testutil.CollectAndCount(off, "idem_records"))
}

func TestLatency(t *testing.T) {
	s, clk, lat := fixture(t)
	knownSequence(t, s, clk)
	reg := prometheus.NewRegistry()
	reg.MustRegister(lat)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 1)
	assert.Equal(t, "idem_operation_duration_seconds", mfs[0].GetName())
	counts := map[string]uint64{}
	for _, m := range mfs[0].GetMetric() {
		counts[label(m, "op")+" "+label(m, "outcome")] = m.GetHistogram().GetSampleCount()
	}
	assert.Equal(t, map[string]uint64{
		"begin lease": 4, "begin replay": 1, "begin mismatch": 1, "begin in-progress": 1,
		"complete ok": 1, "fail ok": 1, "get hit": 1, "get miss": 1, "extend ok": 1,
	}, counts)
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// collectOne returns a collector yielding only c's metric called name (with
// the label values given, in the metric's label order).
func collectOne(c prometheus.Collector, name string, labels ...string) prometheus.Collector {
	return filtered{c, name, labels}
}

type filtered struct {
	c      prometheus.Collector
	name   string
	labels []string
}

func (f filtered) Describe(ch chan<- *prometheus.Desc) { f.c.Describe(ch) }

func (f filtered) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric)
	go func() { f.c.Collect(all); close(all) }()
	for m := range all {
		if !strings.Contains(m.Desc().String(), `"`+f.name+`"`) {
			continue
		}
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			continue
		}
		match := true
		for i, v := range f.labels {
			if i >= len(pb.GetLabel()) || pb.GetLabel()[i].GetValue() != v {
				match = false
			}
		}
		if match {
			ch <- m
		}
	}
}
