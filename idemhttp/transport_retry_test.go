package idemhttp_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/idemhttp"
)

// A gateway in front of the service fails after the handler ran: the
// charge is made and stored, and the client gets a 502. The Transport
// retries with the same key and gets the stored response, replayed; the
// charge is made once.
func TestTransportRetriesFailureAfterHandlerRan(t *testing.T) {
	s := openStore(t, nil)
	var charges atomic.Int64
	service := idemhttp.New(s, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := charges.Add(1)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "charge %d", n)
	}))
	var mu sync.Mutex
	var sent [][]string // the key header values of each request, as sent
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sent = append(sent, r.Header.Values("Idempotency-Key"))
		first := len(sent) == 1
		mu.Unlock()
		if first {
			service.ServeHTTP(httptest.NewRecorder(), r) // runs, then the reply is lost
			http.Error(w, "upstream connection reset", http.StatusBadGateway)
			return
		}
		service.ServeHTTP(w, r)
	}))
	defer gateway.Close()

	client := &http.Client{Transport: &idemhttp.Transport{MinBackoff: time.Millisecond}}
	resp, err := client.Post(gateway.URL+"/payments", "text/plain", strings.NewReader("5000"))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
	require.Equal(t, "charge 1", string(readAll(t, resp.Body)))
	require.EqualValues(t, 1, charges.Load(), "one side effect")

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, sent, 2)
	require.Len(t, sent[0], 1, "one key header")
	require.Regexp(t, quotedUUIDRE, sent[0][0])
	require.Equal(t, sent[0], sent[1], "the retry sent the same key")
}

// statusServer answers the first request with status (and the headers
// given), and every later one with 201; attempts counts requests.
func statusServer(t *testing.T, status int, header http.Header, attempts *atomic.Int64) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if attempts.Add(1) == 1 {
			for k, v := range header {
				w.Header()[k] = v
			}
			w.WriteHeader(status)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestTransportRetryStatuses(t *testing.T) {
	for _, tc := range []struct {
		status   int
		replayed bool
		retried  bool
	}{
		{http.StatusConflict, false, true},
		{http.StatusTooManyRequests, false, true},
		{http.StatusInternalServerError, false, true},
		{http.StatusBadGateway, false, true},
		{http.StatusServiceUnavailable, false, true},
		{http.StatusGatewayTimeout, false, true},
		{http.StatusBadRequest, false, false},
		{http.StatusNotFound, false, false},
		{http.StatusUnprocessableEntity, false, false},
		{http.StatusOK, false, false},
		// The stored outcome of the request: a retry would replay it.
		{http.StatusConflict, true, false},
		{http.StatusInternalServerError, true, false},
	} {
		t.Run(fmt.Sprintf("status=%d/replayed=%v", tc.status, tc.replayed), func(t *testing.T) {
			var attempts atomic.Int64
			h := http.Header{}
			if tc.replayed {
				h.Set("Idempotent-Replayed", "true")
			}
			srv := statusServer(t, tc.status, h, &attempts)
			client := &http.Client{Transport: &idemhttp.Transport{MinBackoff: time.Millisecond}}
			resp, err := client.Post(srv.URL, "text/plain", strings.NewReader("x"))
			require.NoError(t, err)
			resp.Body.Close()
			if tc.retried {
				require.Equal(t, http.StatusCreated, resp.StatusCode)
				require.EqualValues(t, 2, attempts.Load())
			} else {
				require.Equal(t, tc.status, resp.StatusCode)
				require.EqualValues(t, 1, attempts.Load())
			}
		})
	}
}

func TestTransportHonoursRetryAfter(t *testing.T) {
	var attempts atomic.Int64
	srv := statusServer(t, http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}}, &attempts)
	client := &http.Client{Transport: &idemhttp.Transport{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond}}
	begin := time.Now()
	resp, err := client.Post(srv.URL, "text/plain", strings.NewReader("x"))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.GreaterOrEqual(t, time.Since(begin), 950*time.Millisecond, "waited the Retry-After, not the 1ms backoff")

	// Asking for longer than MaxRetryAfter: the answer is returned at once.
	for _, ra := range []string{"3600", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)} {
		attempts.Store(0)
		srv = statusServer(t, http.StatusServiceUnavailable, http.Header{"Retry-After": {ra}}, &attempts)
		client = &http.Client{Transport: &idemhttp.Transport{MaxRetryAfter: time.Minute}}
		begin = time.Now()
		resp, err = client.Post(srv.URL, "text/plain", strings.NewReader("x"))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, ra)
		require.Equal(t, ra, resp.Header.Get("Retry-After"))
		require.EqualValues(t, 1, attempts.Load())
		require.Less(t, time.Since(begin), 5*time.Second)
	}
}

// The Transport never sends an empty or malformed key, nor two key
// headers.
func TestTransportKeyChecks(t *testing.T) {
	var mu sync.Mutex
	var sent []http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sent = append(sent, r.Header.Clone())
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	do := func(tr *idemhttp.Transport, set func(http.Header)) error {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("x"))
		set(req.Header)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	tr := &idemhttp.Transport{}
	for name, set := range map[string]func(http.Header){
		"whitespace key": func(h http.Header) { h.Set("Idempotency-Key", " ") },
		"empty key":      func(h http.Header) { h["Idempotency-Key"] = []string{""} },
		"key with space": func(h http.Header) { h.Set("Idempotency-Key", `"a b"`) },
		"two keys":       func(h http.Header) { h.Set("Idempotency-Key", "a"); h["idempotency-key"] = []string{"b"} },
	} {
		require.ErrorIs(t, do(tr, set), idemhttp.ErrMalformedKey, name)
	}
	err := do(&idemhttp.Transport{NewKey: func() string { return "" }}, func(http.Header) {})
	require.ErrorContains(t, err, "NewKey returned")
	require.ErrorIs(t, err, idemhttp.ErrMalformedKey)
	require.ErrorContains(t, do(&idemhttp.Transport{NewKey: func() string { return strings.Repeat("k", 256) }}, func(http.Header) {}), "longer than 255")
	mu.Lock()
	require.Empty(t, sent, "nothing was sent")
	mu.Unlock()

	// A key set under a lower-case name is the key, sent once, quoted;
	// the same key under two spellings is one key.
	require.NoError(t, do(tr, func(h http.Header) { h["idempotency-key"] = []string{"abc"} }))
	require.NoError(t, do(tr, func(h http.Header) { h["idempotency-key"] = []string{"abc"}; h.Set("Idempotency-Key", `"abc"`) }))
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, sent, 2)
	for _, h := range sent {
		require.Equal(t, []string{`"abc"`}, h.Values("Idempotency-Key"))
	}
}
