package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemprom"
)

// adminHandler serves the read-only admin endpoints of a running store,
// for a listen address of its own (never the public one):
//
//	GET /metrics               Prometheus metrics gathered from reg
//	GET /admin/records/{key}   one record as JSON (idem get -json), 404 when absent
//	GET /admin/stats           records by state, stale leases, disk use and Stats counters
//
// reg should hold an idemprom.Collector for s (and the idemprom.Latency set
// as its Observer); nil means a registry with a Collector alone. Nothing
// here writes to the store. /admin/stats scans the whole store (see
// idemprom.TakeCensus for the cost), bounded by the request's context.
func adminHandler(s *idem.Store, reg *prometheus.Registry) http.Handler {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(idemprom.NewCollector(s, nil))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /admin/records/{key...}", func(w http.ResponseWriter, r *http.Request) {
		key := r.PathValue("key")
		rec, err := s.Get(r.Context(), key)
		switch {
		case errors.Is(err, idem.ErrNotFound):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
		case errors.Is(err, idem.ErrInvalidKey):
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		case err != nil:
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		default:
			writeJSON(w, http.StatusOK, toJSON(rec))
		}
	})
	mux.HandleFunc("GET /admin/stats", func(w http.ResponseWriter, r *http.Request) {
		st, err := takeStats(r.Context(), s, "", "")
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		c := s.Stats()
		st.Counters = &c
		writeJSON(w, http.StatusOK, st)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// fetchJSON reads path from the admin endpoint at addr (host:port or a
// URL) into v. A non-200 answer is an error carrying the endpoint's
// message.
func fetchJSON(addr, path string, v any) error {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+path, nil)
	if err != nil {
		return fmt.Errorf("admin endpoint %s: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		if resp.StatusCode == http.StatusNotFound && e.Error != "" {
			return fmt.Errorf("%s (from %s)", e.Error, addr)
		}
		return fmt.Errorf("admin endpoint %s: %s: %s", addr, resp.Status, e.Error)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("admin endpoint %s: bad answer: %w", addr, err)
	}
	return nil
}
