package idemhttp_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/idemdb/idem/idemhttp"
)

var (
	benchRespBody = []byte(`{"id":"pay_000001","amount":5000,"currency":"USD","status":"succeeded","created":"2026-01-02T03:04:05Z"}` + "\n")
	benchReqBody  = []byte(`{"amount":5000,"currency":"USD"}`)
	benchKey      = "8e03978e-40d5-43e8-bc93-6894a57f9324"
)

// benchHandler answers like a payment API: 201, three headers, a JSON body.
var benchHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Location", "/payments/pay_000001")
	h.Set("Etag", `"v1"`)
	w.WriteHeader(http.StatusCreated)
	w.Write(benchRespBody)
})

// BenchmarkReplay measures requests to the middleware's replay path
// against requests to a bare handler writing the same bytes, both over
// HTTP/1.1 on a loopback httptest.Server with one kept-alive connection:
// what a client sees. The requests/s ratio is bare ns/op divided by replay
// ns/op.
func BenchmarkReplay(b *testing.B) {
	run := func(b *testing.B, h http.Handler) {
		srv := httptest.NewServer(h)
		defer srv.Close()
		client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
		defer client.CloseIdleConnections()
		send := func() (int, []byte) {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/payments", bytes.NewReader(benchReqBody))
			req.Header.Set("Idempotency-Key", benchKey)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, body
		}
		send() // the first request runs and stores; every timed one is a replay
		b.ReportAllocs()
		for b.Loop() {
			if code, body := send(); code != http.StatusCreated || !bytes.Equal(body, benchRespBody) {
				b.Fatalf("got %d %q", code, body)
			}
		}
	}
	b.Run("handler=bare", func(b *testing.B) { run(b, benchHandler) })
	b.Run("handler=replay", func(b *testing.B) { run(b, idemhttp.New(openStore(b, nil), nil)(benchHandler)) })
}

// BenchmarkReplayInProcess is BenchmarkReplay without the network: both
// handlers serve an httptest.ResponseRecorder in process, so the
// difference is the middleware's own cost (reading and hashing the body,
// the store's Begin, decoding the stored response).
func BenchmarkReplayInProcess(b *testing.B) {
	respBody, reqBody, bare := benchRespBody, benchReqBody, benchHandler
	req := httptest.NewRequest(http.MethodPost, "/payments", nil)
	req.Header.Set("Idempotency-Key", benchKey)
	req.Header.Set("Content-Type", "application/json")

	run := func(b *testing.B, h http.Handler) {
		b.ReportAllocs()
		for b.Loop() {
			req.Body = io.NopCloser(bytes.NewReader(reqBody))
			req.ContentLength = int64(len(reqBody))
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != http.StatusCreated || !bytes.Equal(w.Body.Bytes(), respBody) {
				b.Fatalf("got %d %q", w.Code, w.Body)
			}
		}
	}
	b.Run("handler=bare", func(b *testing.B) { run(b, bare) })
	b.Run("handler=replay", func(b *testing.B) {
		s := openStore(b, nil)
		h := idemhttp.New(s, nil)(bare)
		// The first request runs and stores; every timed one is a replay.
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
		h.ServeHTTP(httptest.NewRecorder(), req)
		run(b, h)
	})
}
