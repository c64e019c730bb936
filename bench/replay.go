package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemhttp"
)

func init() {
	register(workload{"http-replay", "idemhttp replay vs a bare handler writing the same bytes, HTTP/1.1 over loopback", replayRows})
}

// replayKeys is how many idempotency keys the replayed requests spread
// over, each completed once before the timed rounds.
const replayKeys = 1000

var (
	replayRespBody = []byte(`{"id":"pay_000001","amount":5000,"currency":"USD","status":"succeeded","created":"2026-01-02T03:04:05Z"}` + "\n")
	replayReqBody  = []byte(`{"amount":5000,"currency":"USD"}`)
)

// bareHandler answers like a payment API: 201, three headers, a JSON body.
var bareHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Location", "/payments/pay_000001")
	h.Set("Etag", `"v1"`)
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write(replayRespBody)
})

// httpSide is a loopback server and a client that keeps one connection
// alive per worker.
type httpSide struct {
	srv    *httptest.Server
	client *http.Client
}

func newHTTPSide(h http.Handler, workers int) *httpSide {
	return &httpSide{srv: httptest.NewServer(h), client: &http.Client{Transport: &http.Transport{
		DisableCompression: true, MaxIdleConns: workers, MaxIdleConnsPerHost: workers,
	}}}
}

func (s *httpSide) close() {
	s.client.CloseIdleConnections()
	s.srv.Close()
}

// post sends the payment request with key and checks the answer is the
// handler's: 201 and the same body. It returns the response's
// Idempotent-Replayed header.
func (s *httpSide) post(key string) (string, error) {
	req, err := http.NewRequest(http.MethodPost, s.srv.URL+"/payments", bytes.NewReader(replayReqBody))
	if err != nil {
		return "", err
	}
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusCreated || !bytes.Equal(body, replayRespBody) {
		return "", fmt.Errorf("key %q: got %d %q, want 201 and the handler's body", key, resp.StatusCode, body)
	}
	return resp.Header.Get("Idempotent-Replayed"), nil
}

// replayTargets sends the same POST to the middleware's replay path
// (subject), over keys whose first request ran the handler before the
// timed rounds, and to the bare handler (baseline), each with workers
// concurrent clients on kept-alive connections.
func replayTargets(e *env, workers int) (subject, baseline func() (*target, error)) {
	subject = func() (*target, error) {
		s, closeStore, err := openEmpty(e, "replay", &idem.Options{GCInterval: -1})
		if err != nil {
			return nil, err
		}
		hs := newHTTPSide(idemhttp.New(s, nil)(bareHandler), workers)
		closeFn := func() error { hs.close(); return closeStore() }
		keys := make([]string, replayKeys)
		for i := range keys {
			keys[i] = keyOf("replay-", uint64(i))
			if replayed, err := hs.post(keys[i]); err != nil || replayed != "" {
				return nil, errors.Join(fmt.Errorf("first request of %q: replayed %q, error %v", keys[i], replayed, err), closeFn())
			}
		}
		rs := rngs(workers)
		return &target{close: closeFn, op: func(w int) error {
			k := keys[rs[w].IntN(len(keys))]
			replayed, err := hs.post(k)
			if err == nil && replayed != "true" {
				err = fmt.Errorf("key %q: not a replay (Idempotent-Replayed %q)", k, replayed)
			}
			return err
		}}, nil
	}
	baseline = func() (*target, error) {
		hs := newHTTPSide(bareHandler, workers)
		rs := rngs(workers)
		return &target{close: func() error { hs.close(); return nil }, op: func(w int) error {
			_, err := hs.post(keyOf("replay-", uint64(rs[w].IntN(replayKeys))))
			return err
		}}, nil
	}
	return subject, baseline
}

func replayRows(_ context.Context, e *env) ([]row, error) {
	var rows []row
	for _, g := range []int{1, 16} {
		sub, base := replayTargets(e, g)
		r, err := compare(e, "http-replay", fmt.Sprintf("HTTP replay vs bare handler, loopback keep-alive, connections=%d", g), g,
			&goal{">=", 0.5, "x"}, sub, base)
		if err != nil {
			return rows, err
		}
		r.Note = fmt.Sprintf("requests/s; %d keys completed before the timed rounds, embedded store with default options", replayKeys)
		rows = append(rows, r)
	}
	return rows, nil
}
