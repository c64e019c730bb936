package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
	"github.com/idemdb/idem/idemprom"
)

// adminHandler serves the admin endpoint of a running store, for a listen
// address of its own (never the public one): GET /metrics, Prometheus
// metrics gathered from reg, beside idemadmin's /admin/ endpoints (records,
// list, stats, and with repairs set the fenced repairs).
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

// adminTimeout bounds one call to an admin endpoint; a list or stats scan
// of a large store takes a while.
const adminTimeout = 5 * time.Minute

// adminCall sends method path (with body as JSON when not nil) to the admin
// endpoint at addr (host:port or a URL) and hands a 200 answer's body to
// read. Any other answer is an error carrying the endpoint's message;
// a 404 one is only that message, as from a store.
func adminCall(addr, method, path string, body any, read func(io.Reader) error) error {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(base, "/")+path, rd)
	if err != nil {
		return fmt.Errorf("admin endpoint %s: %w", addr, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var p idemadmin.Problem
		_ = json.NewDecoder(resp.Body).Decode(&p)
		if resp.StatusCode == http.StatusNotFound && p.Error != "" {
			return fmt.Errorf("%s (from %s)", p.Error, addr)
		}
		if resp.StatusCode == http.StatusConflict {
			return fmt.Errorf("%s (from %s): %w", p.Error, addr, errRefused)
		}
		return fmt.Errorf("admin endpoint %s: %s: %s", addr, resp.Status, p.Error)
	}
	if err := read(resp.Body); err != nil {
		if errors.Is(err, errStop) {
			return err
		}
		return fmt.Errorf("admin endpoint %s: bad answer: %w", addr, err)
	}
	return nil
}

// errRefused marks a repair the admin endpoint refused because the record
// changed since it was shown.
var errRefused = errors.New("refused")

// fetchJSON reads path from the admin endpoint at addr into v.
func fetchJSON(addr, path string, v any) error {
	return adminCall(addr, http.MethodGet, path, nil, func(r io.Reader) error {
		return json.NewDecoder(r).Decode(v)
	})
}

// streamJSON reads the JSON values, one a line, that path answers with,
// calling next with the decoder until the stream ends or next fails.
func streamJSON(addr, path string, next func(*json.Decoder) error) error {
	return adminCall(addr, http.MethodGet, path, nil, func(r io.Reader) error {
		dec := json.NewDecoder(r)
		for dec.More() {
			if err := next(dec); err != nil {
				return err
			}
		}
		// More is also false when the stream broke off between two
		// values: only a clean end of the body is io.EOF.
		if tok, err := dec.Token(); err != io.EOF {
			if err == nil {
				err = fmt.Errorf("unexpected %v", tok)
			}
			return fmt.Errorf("the answer broke off: %w", err)
		}
		return nil
	})
}
