package idemhttp_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
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

// canonicalBodies are 1 MiB JSON bodies of small values, the costly shape
// for a canonicaliser: an array of small objects, an array of small
// numbers, and one object of many keys in reverse order.
func canonicalBodies() map[string][]byte {
	const size = 1 << 20
	objects := []byte("[")
	for i := 0; len(objects) < size-64; i++ {
		if i > 0 {
			objects = append(objects, ',')
		}
		objects = fmt.Appendf(objects, `{"tag":"t%d","id":%d,"ok":true}`, i%10, i)
	}
	objects = append(objects, ']')
	numbers := []byte("[")
	for i := 0; len(numbers) < size-8; i++ {
		if i > 0 {
			numbers = append(numbers, ',')
		}
		numbers = strconv.AppendInt(numbers, int64(i%100), 10)
	}
	numbers = append(numbers, ']')
	keys := []byte("{")
	for i := 0; len(keys) < size-32; i++ {
		if i > 0 {
			keys = append(keys, ',')
		}
		keys = fmt.Appendf(keys, `"k%07d":%d`, 1<<24-i, i%10) // in reverse order
	}
	keys = append(keys, '}')
	return map[string][]byte{"objects": objects, "numbers": numbers, "keys": keys}
}

// BenchmarkCanonicalJSON measures the fingerprint of a 1 MiB JSON body
// with Options.CanonicalJSON (hash=canonical) against hashing the body's
// bytes as they are (hash=raw), the baseline, in the same run.
func BenchmarkCanonicalJSON(b *testing.B) {
	bodies := canonicalBodies()
	for _, name := range []string{"objects", "numbers", "keys"} {
		body := bodies[name]
		for _, canonical := range []bool{false, true} {
			mode := "raw"
			if canonical {
				mode = "canonical"
			}
			b.Run(fmt.Sprintf("body=%s/hash=%s", name, mode), func(b *testing.B) {
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					idemhttp.Fingerprint(http.MethodPost, "/payments", body, canonical)
				}
			})
		}
	}
}
