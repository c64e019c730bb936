// Package idemprom exports the counters and gauges of an idem store to
// Prometheus.
//
// A Collector reports the store's Stats counters (requests by outcome,
// takeovers, lease steps, GC runs and bytes reclaimed) and, from a bounded
// census of the store (Store.Census), the records by state, the stale
// leases and the age of the oldest in-progress record. A Latency, set as the store's
// Options.Observer, keeps the Begin, Get and lease-step latency histograms.
package idemprom

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemdb/idem"
)

// Options configure a Collector. A nil *Options, and every zero field,
// means the default named in the field's comment.
type Options struct {
	// ScanLimit caps the records one census reads. Zero means 100000;
	// negative turns the census off (no records-by-state gauges).
	ScanLimit int
	// ScanInterval is how long a census is reused before a scrape takes a
	// new one. Zero means 1m.
	ScanInterval time.Duration
	// ScanTimeout bounds one census. Zero means 10s.
	ScanTimeout time.Duration
}

// DefaultScanLimit is the default for Options.ScanLimit.
const DefaultScanLimit = 100_000

// Collector is a prometheus.Collector for one store. It is safe for
// simultaneous use by multiple goroutines.
//
// The counters come from Store.Stats and cost nothing. The records-by-state
// gauges come from Store.Census, which decodes every record up to
// Options.ScanLimit of them (its cost is in docs/decisions.md, "The
// census"), taken at most once per Options.ScanInterval however often
// Prometheus scrapes. When the store holds more records than the limit,
// idem_census_truncated is 1 and the gauges are lower bounds.
type Collector struct {
	s    *idem.Store
	opts Options

	mu       sync.Mutex // protects census, at and failures; held during a census so scrapes share it
	census   idem.Census
	at       time.Time // when census was taken, by the real clock; zero before the first
	failures uint64
}

// NewCollector returns a Collector for s. Passing nil options uses the
// defaults.
func NewCollector(s *idem.Store, opts *Options) *Collector {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.ScanLimit == 0 {
		o.ScanLimit = DefaultScanLimit
	}
	if o.ScanInterval <= 0 {
		o.ScanInterval = time.Minute
	}
	if o.ScanTimeout <= 0 {
		o.ScanTimeout = 10 * time.Second
	}
	return &Collector{s: s, opts: o}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descRequests    = desc("idem_requests_total", "Begin calls by outcome, and lease steps refused by fencing (lease-lost).", "outcome")
	descTakeovers   = desc("idem_takeovers_total", "Leases granted over a lapsed lease.")
	descGets        = desc("idem_gets_total", "Get calls by result.", "result")
	descEnded       = desc("idem_leases_ended_total", "Leases ended by their holder, by how.", "how")
	descConflicts   = desc("idem_conflicts_total", "Writes that lost a race and were retried from the winner's record.")
	descCacheHits   = desc("idem_cache_hits_total", "Answers from the read cache.")
	descSweeps      = desc("idem_sweeps_total", "Background expiry runs.")
	descGCRuns      = desc("idem_gc_runs_total", "Backend garbage collections run.")
	descGCBytes     = desc("idem_gc_reclaimed_bytes_total", "Bytes of disk given back by garbage collection.")
	descLastGC      = desc("idem_gc_last_run_timestamp_seconds", "When the last garbage collection ended.")
	descDisk        = desc("idem_disk_bytes", "Disk used by the store.")
	descDiskFree    = desc("idem_disk_free_bytes", "Free space on the embedded store's file system; writes fail with ErrNoSpace below Options.DiskReserve.")
	descRecords     = desc("idem_records", "Live records by state, at the last census.", "state")
	descCorrupt     = desc("idem_records_corrupt", "Records that cannot be decoded, at the last census.")
	descStale       = desc("idem_stale_leases", "In-progress records whose lease has lapsed with no takeover, at the last census.")
	descOldest      = desc("idem_oldest_in_progress_age_seconds", "Age of the oldest in-progress record, at the last census (0 when none).")
	descTruncated   = desc("idem_census_truncated", "1 when the last census stopped at its scan limit, so the record gauges are lower bounds.")
	descCensusTook  = desc("idem_census_duration_seconds", "How long the last census took.")
	descCensusFails = desc("idem_census_errors_total", "Censuses that failed.")
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descTakeovers, descGets, descEnded, descConflicts,
		descCacheHits, descSweeps, descGCRuns, descGCBytes, descLastGC, descDisk, descDiskFree, descRecords, descCorrupt,
		descStale, descOldest, descTruncated, descCensusTook, descCensusFails} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(descRequests, st.Leases, "lease")
	counter(descRequests, st.Replays, "replay")
	counter(descRequests, st.InProgress, "in-progress")
	counter(descRequests, st.Mismatches, "mismatch")
	counter(descRequests, st.LeaseLost, "lease-lost")
	counter(descTakeovers, st.Takeovers)
	counter(descGets, st.Hits, "hit")
	counter(descGets, st.Misses, "miss")
	counter(descEnded, st.Completed, "completed")
	counter(descEnded, st.Failed, "failed")
	counter(descEnded, st.Released, "released")
	counter(descConflicts, st.Conflicts)
	counter(descCacheHits, st.CacheHits)
	counter(descSweeps, st.Sweeps)
	counter(descGCRuns, st.GCRuns)
	counter(descGCBytes, uint64(max(st.GCReclaimed, 0)))
	if !st.LastGC.IsZero() {
		gauge(descLastGC, float64(st.LastGC.UnixNano())/1e9)
	}
	if du := c.s.DiskUsage(); du >= 0 {
		gauge(descDisk, float64(du))
	} else if st.DiskBytes > 0 {
		gauge(descDisk, float64(st.DiskBytes))
	}
	if free := c.s.DiskFree(); free >= 0 {
		gauge(descDiskFree, float64(free))
	}

	if c.opts.ScanLimit < 0 {
		return
	}
	cen, ok, failures := c.currentCensus()
	counter(descCensusFails, failures)
	if !ok {
		return
	}
	for _, s := range []idem.State{idem.StateInProgress, idem.StateCompleted, idem.StateFailed} {
		gauge(descRecords, float64(cen.Records[s]), s.String())
	}
	gauge(descCorrupt, float64(cen.Corrupt))
	gauge(descStale, float64(cen.StaleLeases))
	gauge(descOldest, cen.OldestInProgress.Seconds())
	truncated := 0.0
	if cen.Truncated {
		truncated = 1
	}
	gauge(descTruncated, truncated)
	gauge(descCensusTook, cen.Took.Seconds())
}

// currentCensus returns the last census, taking a new one when it is older
// than ScanInterval. ok is false when there is none to report.
func (c *Collector) currentCensus() (cen idem.Census, ok bool, failures uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() || time.Since(c.at) >= c.opts.ScanInterval {
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.ScanTimeout)
		defer cancel()
		cen, err := c.s.Census(ctx, "", c.opts.ScanLimit)
		if err != nil {
			c.failures++
			return idem.Census{}, false, c.failures
		}
		c.census, c.at = cen, time.Now()
	}
	return c.census, true, c.failures
}
