package idemprom

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Latency is an idem.Observer that keeps a histogram of operation
// durations, idem_operation_duration_seconds, labelled by op ("begin",
// "get", "complete", "fail", "release", "extend") and outcome (see
// idem.Observer). It is a prometheus.Collector: register it beside the
// Collector. Set it as Options.Observer when opening the store:
//
//	lat := idemprom.NewLatency()
//	s, err := idem.Open(dir, &idem.Options{Observer: lat})
//	reg.MustRegister(lat, idemprom.NewCollector(s, nil))
//
// It is safe for simultaneous use by multiple goroutines.
type Latency struct {
	h *prometheus.HistogramVec
}

// LatencyBuckets are the histogram's upper bounds in seconds: from 5µs (a
// cached Get) to 1s (a durable Complete on a struggling disk).
var LatencyBuckets = []float64{
	5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1,
}

// NewLatency returns an empty Latency.
func NewLatency() *Latency {
	return &Latency{h: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "idem_operation_duration_seconds",
		Help:    "Duration of idem store operations (Begin, Get and lease steps) by outcome.",
		Buckets: LatencyBuckets,
	}, []string{"op", "outcome"})}
}

// Observe implements idem.Observer.
func (l *Latency) Observe(op, outcome string, d time.Duration) {
	l.h.WithLabelValues(op, outcome).Observe(d.Seconds())
}

// Describe implements prometheus.Collector.
func (l *Latency) Describe(ch chan<- *prometheus.Desc) { l.h.Describe(ch) }

// Collect implements prometheus.Collector.
func (l *Latency) Collect(ch chan<- prometheus.Metric) { l.h.Collect(ch) }
