package idemhttp_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemhttp"
	"github.com/idemdb/idem/idemtest"
)

// A client that gives up (times out) while the handler still runs must not
// stop the lease's renewal: the handler may be past its side effect and
// ignore the cancellation, and a lapsed lease would let the client's retry
// run it a second time.
func TestLeaseRenewedAfterClientDisconnects(t *testing.T) {
	clock := idemtest.NewClock()
	s := openStore(t, &idem.Options{Now: clock.Now})
	const lease = 30 * time.Millisecond // renewed every 10ms of real time
	started, gone, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var runs atomic.Int64
	h := idemhttp.New(s, &idemhttp.Options{LeaseTTL: lease})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) > 1 {
			w.WriteHeader(http.StatusCreated)
			return
		}
		close(started)
		<-r.Context().Done() // the client went away ...
		close(gone)
		<-release // ... but the charge goes on
		w.WriteHeader(http.StatusCreated)
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/payments", strings.NewReader("a"))
	require.NoError(t, err)
	req.Header.Set("Idempotency-Key", "k")
	errc := make(chan error, 1)
	go func() {
		resp, err := srv.Client().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-started
	cancel()
	require.Error(t, <-errc)
	<-gone

	for range 20 {
		clock.Advance(lease * 2 / 3)
		require.Eventually(t, func() bool {
			return onlyRecord(t, s).LeaseUntil.After(clock.Now().Add(lease / 2))
		}, 2*time.Second, time.Millisecond, "the lease is no longer renewed")
	}
	req, err = http.NewRequest(http.MethodPost, srv.URL+"/payments", strings.NewReader("a"))
	require.NoError(t, err)
	req.Header.Set("Idempotency-Key", "k")
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusConflict, resp.StatusCode)
	require.EqualValues(t, 1, runs.Load())
}

// The expiry advertised with a stored failure is the failure's lifetime,
// the same on the first response and on its replays.
func TestExpiresHeaderOfFailure(t *testing.T) {
	clock := idemtest.NewClock()
	s := openStore(t, &idem.Options{Now: clock.Now, CompletedTTL: 24 * time.Hour, FailedTTL: time.Hour})
	h := idemhttp.New(s, &idemhttp.Options{ExpiresHeader: "Idempotency-Expires"})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "card declined", http.StatusPaymentRequired)
	}))
	want := idemtest.T0.Add(time.Hour).Format(http.TimeFormat)
	first := serve(h, post("/payments", "k", "a"))
	require.Equal(t, http.StatusPaymentRequired, first.Code)
	replay := serve(h, post("/payments", "k", "a"))
	require.Equal(t, "true", replay.Header().Get("Idempotent-Replayed"))
	require.Equal(t, want, replay.Header().Get("Idempotency-Expires"))
	require.Equal(t, want, first.Header().Get("Idempotency-Expires"))
}

// Trailers reach the client of the first response as trailers, and are
// neither stored nor replayed, not even as headers.
func TestTrailersNotStored(t *testing.T) {
	s := openStore(t, nil)
	srv := httptest.NewServer(idemhttp.New(s, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte("body"))
		w.Header().Set("X-Sum", "abc")
		w.Header().Set(http.TrailerPrefix+"X-Late", "z")
	})))
	defer srv.Close()
	send := func() *http.Response {
		req, err := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("a"))
		require.NoError(t, err)
		req.Header.Set("Idempotency-Key", "k")
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		require.Equal(t, "body", string(readAll(t, resp.Body)))
		resp.Body.Close()
		return resp
	}
	first := send()
	require.Equal(t, http.StatusCreated, first.StatusCode)
	require.Equal(t, http.Header{"X-Sum": {"abc"}, "X-Late": {"z"}}, first.Trailer)
	require.Empty(t, first.Header.Get("X-Sum"))

	replay := send()
	require.Equal(t, "true", replay.Header.Get("Idempotent-Replayed"))
	require.Equal(t, http.StatusCreated, replay.StatusCode)
	require.Empty(t, replay.Header.Get("X-Sum"), "a trailer is not replayed as a header")
	require.Empty(t, replay.Trailer)
}

// A 409 that is the stored outcome of the request (the handler's own
// conflict, replayed) is final: retrying it cannot change the answer.
func TestTransportDoesNotRetryReplayedConflict(t *testing.T) {
	s := openStore(t, nil)
	var runs, requests atomic.Int64
	mw := idemhttp.New(s, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		http.Error(w, "payment already captured", http.StatusConflict)
	}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		mw.ServeHTTP(w, r)
	}))
	defer srv.Close()
	client := &http.Client{Transport: &idemhttp.Transport{Base: srv.Client().Transport, MinBackoff: time.Millisecond}}

	resp, err := client.Post(srv.URL+"/payments/1/capture", "text/plain", strings.NewReader("a"))
	require.NoError(t, err)
	require.Equal(t, "payment already captured\n", string(readAll(t, resp.Body)))
	resp.Body.Close()
	require.Equal(t, http.StatusConflict, resp.StatusCode)
	require.EqualValues(t, 1, runs.Load())
	require.LessOrEqual(t, requests.Load(), int64(2), "retried a replayed 409")
}

// The first response advertises the expiry the store gave the record, even
// when the clock has moved on between storing it and answering.
func TestExpiresHeaderMatchesRecord(t *testing.T) {
	var mu sync.Mutex
	now := idemtest.T0
	// Every reading of the clock is a second after the last one.
	tick := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(time.Second)
		return now
	}
	s := openStore(t, &idem.Options{Now: tick})
	h := idemhttp.New(s, &idemhttp.Options{ExpiresHeader: "Idempotency-Expires"})(&charge{})
	first := serve(h, post("/payments", "k", "a"))
	require.Equal(t, http.StatusCreated, first.Code)
	rec := onlyRecord(t, s)
	require.Equal(t, rec.ExpiresAt.UTC().Format(http.TimeFormat), first.Header().Get("Idempotency-Expires"))
	replay := serve(h, post("/payments", "k", "a"))
	require.Equal(t, "true", replay.Header().Get("Idempotent-Replayed"))
	require.Equal(t, first.Header().Get("Idempotency-Expires"), replay.Header().Get("Idempotency-Expires"))
}

// Headers a handler sets after WriteHeader are not sent by net/http (but
// for trailers); behind the middleware they are not sent either, on the
// first response or the replay.
func TestHeadersAfterWriteHeaderNotSent(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Before", "1")
		w.WriteHeader(http.StatusCreated)
		w.Header().Set("X-After", "1")
		w.Header().Set("X-Before", "changed")
		_, _ = w.Write([]byte("ok"))
	})
	bare := httptest.NewServer(handler)
	defer bare.Close()
	s := openStore(t, nil)
	wrapped := httptest.NewServer(idemhttp.New(s, nil)(handler))
	defer wrapped.Close()
	do := func(url string) *http.Response {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader("x"))
		require.NoError(t, err)
		req.Header.Set("Idempotency-Key", "k")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for i, resp := range []*http.Response{do(bare.URL), do(wrapped.URL), do(wrapped.URL)} {
		assert.Equal(t, http.StatusCreated, resp.StatusCode, i)
		assert.Equal(t, "1", resp.Header.Get("X-Before"), i)
		assert.Empty(t, resp.Header.Get("X-After"), i)
	}
}

// A handler whose goroutine exits (runtime.Goexit) leaves its key
// retryable, as a panic does, instead of in progress until its lease
// lapses.
func TestHandlerGoexitLeavesKeyRetryable(t *testing.T) {
	s := openStore(t, nil)
	var runs atomic.Int64
	h := idemhttp.New(s, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) == 1 {
			runtime.Goexit()
		}
		w.WriteHeader(http.StatusCreated)
	}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve(h, post("/pay", "k", "a"))
	}()
	<-done
	w := serve(h, post("/pay", "k", "a"))
	require.Equal(t, http.StatusCreated, w.Code, "the retry runs the handler, not a 409: %s", w.Body)
	require.EqualValues(t, 2, runs.Load())
}
