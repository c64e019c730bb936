package main

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
	"github.com/idemdb/idem/idemprom"
)

// adminHandler serves the admin endpoint of a running store (idem serve
// -admin), for a listen address of its own (never the public one): GET
// /metrics, Prometheus metrics gathered from reg, beside idemadmin's
// /admin/ endpoints (records, list, stats, and with repairs set the fenced
// repairs).
//
// reg should hold an idemprom.Collector for s (and the idemprom.Latency set
// as its Observer); nil means a registry with a Collector alone.
func adminHandler(s *idem.Store, reg *prometheus.Registry, repairs bool) http.Handler {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(idemprom.NewCollector(s, nil))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/admin/", idemadmin.Handler(s, &idemadmin.Options{Repairs: repairs}))
	return mux
}
