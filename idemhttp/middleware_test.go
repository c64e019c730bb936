package idemhttp_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemhttp"
	"github.com/idemdb/idem/idemtest"
)

// charge is a handler that counts its runs and answers 201 with the run
// number and the request body.
type charge struct{ runs atomic.Int64 }

func (c *charge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := c.runs.Add(1)
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Location", fmt.Sprintf("/payments/%d", n))
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "charge %d: %s", n, body)
}

func TestFirstRunThenReplay(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, nil)(c)

	first := serve(h, post("/payments", "k1", "amount=5000"))
	require.Equal(t, http.StatusCreated, first.Code)
	require.Equal(t, "charge 1: amount=5000", first.Body.String(), "the handler gets the body unchanged")
	require.Empty(t, first.Header().Get("Idempotent-Replayed"))

	for range 3 {
		again := serve(h, post("/payments", "k1", "amount=5000"))
		require.Equal(t, http.StatusCreated, again.Code)
		require.Equal(t, "true", again.Header().Get("Idempotent-Replayed"))
		require.Equal(t, first.Body.String(), again.Body.String())
		require.Equal(t, "/payments/1", again.Header().Get("Location"))
	}
	require.EqualValues(t, 1, c.runs.Load())

	// Another key is another request.
	other := serve(h, post("/payments", "k2", "amount=5000"))
	require.Equal(t, "charge 2: amount=5000", other.Body.String())
	require.EqualValues(t, 2, c.runs.Load())
}

func TestPassThrough(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, nil)(c)

	// No key: not guarded.
	serve(h, post("/payments", "", "a"))
	serve(h, post("/payments", "", "a"))
	require.EqualValues(t, 2, c.runs.Load())

	// Methods other than POST and PATCH: not guarded, key or not.
	for range 2 {
		r := post("/payments", "k", "")
		r.Method = http.MethodPut
		serve(h, r)
	}
	require.EqualValues(t, 4, c.runs.Load())

	// PATCH is guarded by default.
	for range 2 {
		r := post("/payments/1", "k", "x")
		r.Method = http.MethodPatch
		serve(h, r)
	}
	require.EqualValues(t, 5, c.runs.Load())
}

func TestKeyRequired(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, &idemhttp.Options{
		Required: func(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/payments") },
	})(c)

	w := serve(h, post("/payments", "", "a"))
	requireRecProblem(t, w, http.StatusBadRequest, idemhttp.ProblemKeyRequired, "POST /payments", "Idempotency-Key")
	require.EqualValues(t, 0, c.runs.Load())

	w = serve(h, post("/refunds", "", "a"))
	require.Equal(t, http.StatusCreated, w.Code)
	require.EqualValues(t, 1, c.runs.Load())
}

func TestMalformedKey(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, nil)(c)
	for _, tc := range []struct{ name, value, detail string }{
		{"empty", "", "empty"},
		{"empty quoted", `""`, "empty"},
		{"too long", strings.Repeat("k", 256), "256 bytes"},
		{"space", `"a b"`, "not visible ASCII"},
		{"non-ASCII", "caf\xc3\xa9", "not visible ASCII"},
		{"unclosed", `"abc`, "not closed"},
		{"two values", "a,b", "more than one value"},
		{"bad parameter name", `"abc";X=1`, "parameter name"},
		{"parameter without value", `"abc";x=`, "value missing"},
		{"space before parameters", `"abc" ;x=1`, "unexpected"},
		{"bad escape", `"a\b"`, "bad escape"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := post("/payments", "", "a")
			r.Header["Idempotency-Key"] = []string{tc.value}
			w := serve(h, r)
			requireRecProblem(t, w, http.StatusBadRequest, idemhttp.ProblemInvalidKey, "Idempotency-Key", tc.detail)
		})
	}
	r := post("/payments", "", "a")
	r.Header["Idempotency-Key"] = []string{"a", "b"}
	requireRecProblem(t, serve(h, r), http.StatusBadRequest, idemhttp.ProblemInvalidKey, "2 Idempotency-Key headers")
	require.EqualValues(t, 0, c.runs.Load())

	// The quoted form, the bare token and the quoted form with parameters
	// name the same key.
	serve(h, post("/payments", `"abc"`, "a"))
	for _, v := range []string{"abc", `"abc";v=1`, `"abc"; v=1;flag;d=1.5;s="x";t=tok/1;b=:AQ==:;q=?0`} {
		w := serve(h, post("/payments", v, "a"))
		require.Equal(t, "true", w.Header().Get("Idempotent-Replayed"), v)
	}
	require.EqualValues(t, 1, c.runs.Load())
}

func TestKeyReused(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, nil)(c)
	serve(h, post("/payments", "k", "amount=5000"))

	w := serve(h, post("/payments", "k", "amount=7000"))
	p := requireRecProblem(t, w, http.StatusUnprocessableEntity, idemhttp.ProblemKeyReused, "another request", "POST /payments")
	require.Equal(t, "k", p.Key)

	// Another path or method with the same key is another request too.
	requireRecProblem(t, serve(h, post("/refunds", "k", "amount=5000")), http.StatusUnprocessableEntity, idemhttp.ProblemKeyReused)
	r := post("/payments", "k", "amount=5000")
	r.Method = http.MethodPatch
	requireRecProblem(t, serve(h, r), http.StatusUnprocessableEntity, idemhttp.ProblemKeyReused)
	requireRecProblem(t, serve(h, post("/payments?x=1", "k", "amount=5000")), http.StatusUnprocessableEntity, idemhttp.ProblemKeyReused)
	require.EqualValues(t, 1, c.runs.Load())
}

func TestCanonicalJSON(t *testing.T) {
	for _, canonical := range []bool{false, true} {
		t.Run(fmt.Sprintf("canonical=%v", canonical), func(t *testing.T) {
			s := openStore(t, nil)
			c := &charge{}
			h := idemhttp.New(s, &idemhttp.Options{CanonicalJSON: canonical})(c)
			serve(h, post("/payments", "k", `{"amount":5000,"currency":"USD"}`))
			w := serve(h, post("/payments", "k", "{\n  \"currency\": \"USD\",\n  \"amount\": 5000\n}"))
			if canonical {
				require.Equal(t, http.StatusCreated, w.Code)
				require.Equal(t, "true", w.Header().Get("Idempotent-Replayed"))
			} else {
				requireRecProblem(t, w, http.StatusUnprocessableEntity, idemhttp.ProblemKeyReused)
			}
			// A changed value is another request either way.
			w = serve(h, post("/payments", "k", `{"currency":"USD","amount":7000}`))
			requireRecProblem(t, w, http.StatusUnprocessableEntity, idemhttp.ProblemKeyReused)
			require.EqualValues(t, 1, c.runs.Load())
		})
	}
}

func TestBodyTooLarge(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, &idemhttp.Options{MaxBodyBytes: 10})(c)

	w := serve(h, post("/payments", "k", strings.Repeat("x", 11)))
	requireRecProblem(t, w, http.StatusRequestEntityTooLarge, idemhttp.ProblemBodyTooLarge, "10 bytes")

	// Without a Content-Length (chunked), the limit holds while reading.
	r := post("/payments", "k", "")
	r.Body = io.NopCloser(strings.NewReader(strings.Repeat("x", 100)))
	r.ContentLength = -1
	requireRecProblem(t, serve(h, r), http.StatusRequestEntityTooLarge, idemhttp.ProblemBodyTooLarge)
	require.EqualValues(t, 0, c.runs.Load())

	// At the limit the request runs.
	require.Equal(t, http.StatusCreated, serve(h, post("/payments", "k", strings.Repeat("x", 10))).Code)
	require.EqualValues(t, 1, c.runs.Load())
}

func TestInProgress(t *testing.T) {
	clock := idemtest.NewClock()
	s := openStore(t, &idem.Options{Now: clock.Now})
	started, release := make(chan struct{}), make(chan struct{})
	var runs atomic.Int64
	h := idemhttp.New(s, &idemhttp.Options{LeaseTTL: 10 * time.Second})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		close(started)
		<-release
		w.WriteHeader(http.StatusCreated)
	}))
	done := make(chan int)
	go func() { done <- serve(h, post("/payments", "k", "a")).Code }()
	<-started

	// Retry-After is as long as the request has run so far, at least a
	// second, at most until its lease lapses.
	w := serve(h, post("/payments", "k", "a"))
	requireRecProblem(t, w, http.StatusConflict, idemhttp.ProblemInProgress, "still running", "retry after 1 second")
	require.Equal(t, "1", w.Header().Get("Retry-After"))

	clock.Advance(2300 * time.Millisecond)
	w = serve(h, post("/payments", "k", "a"))
	requireRecProblem(t, w, http.StatusConflict, idemhttp.ProblemInProgress, "3 seconds")
	require.Equal(t, "3", w.Header().Get("Retry-After"), "the time it has run so far, rounded up")

	clock.Advance(4200 * time.Millisecond)
	w = serve(h, post("/payments", "k", "a"))
	require.Equal(t, http.StatusConflict, w.Code)
	require.Equal(t, "4", w.Header().Get("Retry-After"), "seconds until the lease lapses, rounded up")

	// Another body with the running key is a reuse, not a wait.
	requireRecProblem(t, serve(h, post("/payments", "k", "b")), http.StatusUnprocessableEntity, idemhttp.ProblemKeyReused)

	close(release)
	require.Equal(t, http.StatusCreated, <-done)
	require.Equal(t, "true", serve(h, post("/payments", "k", "a")).Header().Get("Idempotent-Replayed"))
	require.EqualValues(t, 1, runs.Load())
}

// Options.RetryAfter replaces the default hint.
func TestRetryAfterOption(t *testing.T) {
	clock := idemtest.NewClock()
	s := openStore(t, &idem.Options{Now: clock.Now})
	started, release := make(chan struct{}), make(chan struct{})
	var seen *idem.Record
	h := idemhttp.New(s, &idemhttp.Options{RetryAfter: func(running *idem.Record, now time.Time) time.Duration {
		seen = running
		return running.LeaseUntil.Sub(now)
	}})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
	}))
	done := make(chan struct{})
	go func() { serve(h, post("/payments", "k", "a")); close(done) }()
	<-started
	w := serve(h, post("/payments", "k", "a"))
	require.Equal(t, http.StatusConflict, w.Code)
	require.Equal(t, "30", w.Header().Get("Retry-After"), "the store's 30 s lease")
	require.NotNil(t, seen)
	require.Equal(t, idem.StateInProgress, seen.State)
	close(release)
	<-done
}

func TestStoreUnavailable(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, nil)(c)
	require.NoError(t, s.Close())

	w := serve(h, post("/payments", "k", "a"))
	requireRecProblem(t, w, http.StatusServiceUnavailable, idemhttp.ProblemStoreUnavailable, "not run")
	require.Equal(t, "1", w.Header().Get("Retry-After"))
	require.EqualValues(t, 0, c.runs.Load(), "the handler never runs unguarded")

	// Requests the middleware does not guard are not its business.
	require.Equal(t, http.StatusCreated, serve(h, post("/payments", "", "a")).Code)
}

func TestPanicLeavesKeyRetryable(t *testing.T) {
	s := openStore(t, nil)
	var runs atomic.Int64
	h := idemhttp.New(s, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) == 1 {
			panic("card network exploded")
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "charged")
	}))
	require.PanicsWithValue(t, "card network exploded", func() { serve(h, post("/payments", "k", "a")) })

	w := serve(h, post("/payments", "k", "a"))
	require.Equal(t, http.StatusCreated, w.Code)
	require.Equal(t, "charged", w.Body.String())
	require.Empty(t, w.Header().Get("Idempotent-Replayed"))
	require.EqualValues(t, 2, runs.Load(), "the retry ran the handler again")

	// The key kept its fingerprint while retryable: a reuse is still caught.
	requireRecProblem(t, serve(h, post("/payments", "k", "b")), http.StatusUnprocessableEntity, idemhttp.ProblemKeyReused)
	require.Equal(t, "true", serve(h, post("/payments", "k", "a")).Header().Get("Idempotent-Replayed"))
}

func TestFailurePolicy(t *testing.T) {
	for _, tc := range []struct {
		status int
		policy func(int) idemhttp.Outcome
		runs   int64 // after three requests
		state  idem.State
	}{
		{http.StatusCreated, nil, 1, idem.StateCompleted},
		{http.StatusSeeOther, nil, 1, idem.StateCompleted},
		{http.StatusBadRequest, nil, 1, idem.StateFailed},
		{http.StatusNotFound, nil, 1, idem.StateFailed},
		{http.StatusTooManyRequests, nil, 3, idem.StateFailed},
		{http.StatusInternalServerError, nil, 3, idem.StateFailed},
		{http.StatusBadGateway, nil, 3, idem.StateFailed},
		{http.StatusInternalServerError, func(int) idemhttp.Outcome { return idemhttp.Failed }, 1, idem.StateFailed},
		{http.StatusBadRequest, func(int) idemhttp.Outcome { return idemhttp.Retry }, 3, idem.StateFailed},
		{http.StatusBadRequest, func(int) idemhttp.Outcome { return idemhttp.Completed }, 1, idem.StateCompleted},
	} {
		t.Run(fmt.Sprintf("status=%d/custom=%v", tc.status, tc.policy != nil), func(t *testing.T) {
			s := openStore(t, nil)
			var runs atomic.Int64
			h := idemhttp.New(s, &idemhttp.Options{Policy: tc.policy})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				fmt.Fprintf(w, "run %d", runs.Add(1))
			}))
			var last string
			for i := range 3 {
				w := serve(h, post("/payments", "k", "a"))
				require.Equal(t, tc.status, w.Code)
				replayed := w.Header().Get("Idempotent-Replayed") == "true"
				require.Equal(t, tc.runs == 1 && i > 0, replayed)
				last = w.Body.String()
			}
			require.Equal(t, tc.runs, runs.Load())
			require.Equal(t, fmt.Sprintf("run %d", tc.runs), last)
			rec := onlyRecord(t, s)
			require.Equal(t, tc.state, rec.State)
			require.Equal(t, tc.runs > 1, rec.Retryable)
		})
	}
}

// onlyRecord returns the one record in s.
func onlyRecord(t *testing.T, s *idem.Store) *idem.Record {
	t.Helper()
	var recs []*idem.Record
	require.NoError(t, s.Scan(context.Background(), "", func(_ string, rec *idem.Record, err error) error {
		recs = append(recs, rec)
		return err
	}))
	require.Len(t, recs, 1)
	return recs[0]
}

func TestStreamedResponse(t *testing.T) {
	for _, passThrough := range []bool{false, true} {
		t.Run(fmt.Sprintf("passthrough=%v", passThrough), func(t *testing.T) {
			s := openStore(t, nil)
			var runs atomic.Int64
			h := idemhttp.New(s, &idemhttp.Options{PassThroughUnstored: passThrough})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				runs.Add(1)
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, "event 1\n")
				require.NoError(t, http.NewResponseController(w).Flush())
				io.WriteString(w, "event 2\n")
			}))
			first := serve(h, post("/stream", "k", "a"))
			require.Equal(t, http.StatusOK, first.Code)
			require.True(t, first.Flushed, "the flush reached the client")
			require.Equal(t, "event 1\nevent 2\n", first.Body.String())
			require.Equal(t, "text/event-stream", first.Header().Get("Content-Type"))

			w := serve(h, post("/stream", "k", "a"))
			if passThrough {
				require.Equal(t, "event 1\nevent 2\n", w.Body.String())
				require.EqualValues(t, 2, runs.Load(), "a released key runs again")
				return
			}
			requireRecProblem(t, w, http.StatusUnprocessableEntity, idemhttp.ProblemNotStored, "streamed", "not run again")
			require.Equal(t, "true", w.Header().Get("Idempotent-Replayed"))
			require.EqualValues(t, 1, runs.Load())
		})
	}
}

func TestOversizedResponse(t *testing.T) {
	for _, tc := range []struct {
		name string
		body int
		hdr  int
	}{
		{"body", 4096, 0},
		{"headers", 900, 400}, // the body fits, the encoded response does not
	} {
		for _, passThrough := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/passthrough=%v", tc.name, passThrough), func(t *testing.T) {
				s := openStore(t, &idem.Options{MaxResponseSize: 1024})
				var runs atomic.Int64
				body := strings.Repeat("b", tc.body)
				h := idemhttp.New(s, &idemhttp.Options{PassThroughUnstored: passThrough})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					runs.Add(1)
					w.Header().Set("X-Big", strings.Repeat("h", tc.hdr))
					w.WriteHeader(http.StatusCreated)
					for i := 0; i < len(body); i += 100 {
						io.WriteString(w, body[i:min(i+100, len(body))])
					}
				}))
				first := serve(h, post("/export", "k", "a"))
				require.Equal(t, http.StatusCreated, first.Code)
				require.Equal(t, body, first.Body.String(), "the client gets the whole response")

				w := serve(h, post("/export", "k", "a"))
				if passThrough {
					require.Equal(t, body, w.Body.String())
					require.EqualValues(t, 2, runs.Load())
					return
				}
				requireRecProblem(t, w, http.StatusUnprocessableEntity, idemhttp.ProblemNotStored, "larger than")
				require.EqualValues(t, 1, runs.Load())
			})
		}
	}
}

func TestSetCookieNotReplayed(t *testing.T) {
	s := openStore(t, nil)
	h := idemhttp.New(s, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "session", Value: "secret"})
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Connection", "X-Conn-Private")
		w.Header().Set("X-Conn-Private", "1")
		w.Header().Set("X-Kept", "1")
		w.WriteHeader(http.StatusCreated)
	}))
	first := serve(h, post("/login", "k", "a"))
	require.NotEmpty(t, first.Header().Get("Set-Cookie"), "the first response is the handler's own")

	w := serve(h, post("/login", "k", "a"))
	require.Equal(t, "true", w.Header().Get("Idempotent-Replayed"))
	require.Equal(t, "1", w.Header().Get("X-Kept"))
	for _, name := range []string{"Set-Cookie", "Keep-Alive", "Connection", "X-Conn-Private"} {
		require.Empty(t, w.Header().Values(name), name)
	}
}

func TestScopeIsolation(t *testing.T) {
	s := openStore(t, nil)
	var runs atomic.Int64
	h := idemhttp.New(s, &idemhttp.Options{
		Scope: func(r *http.Request) string { return r.Header.Get("X-Principal") },
	})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "charged %s", r.Header.Get("X-Principal"))
	}))
	as := func(principal, body string) *http.Request {
		r := post("/payments", "shared-key", body)
		r.Header.Set("X-Principal", principal)
		return r
	}
	require.Equal(t, "charged alice", serve(h, as("alice", "a")).Body.String())
	require.Equal(t, "charged bob", serve(h, as("bob", "a")).Body.String(), "bob's request runs: alice's response is not his")
	require.EqualValues(t, 2, runs.Load())

	// Each replays its own, and a different body under one principal does
	// not collide with the other's.
	for range 2 {
		w := serve(h, as("alice", "a"))
		require.Equal(t, "true", w.Header().Get("Idempotent-Replayed"))
		require.Equal(t, "charged alice", w.Body.String())
		w = serve(h, as("bob", "a"))
		require.Equal(t, "charged bob", w.Body.String())
	}
	require.Equal(t, "charged carol", serve(h, as("carol", "zzz")).Body.String())
	// Scopes that would need escaping, or are very long, still separate.
	long := strings.Repeat("p", 300)
	require.Equal(t, "charged "+long, serve(h, as(long, "a")).Body.String())
	require.Equal(t, "charged a:b", serve(h, as("a:b", "a")).Body.String())
	require.EqualValues(t, 5, runs.Load())
}

func TestTTLPerRoute(t *testing.T) {
	clock := idemtest.NewClock()
	s := openStore(t, &idem.Options{Now: clock.Now})
	h := idemhttp.New(s, &idemhttp.Options{
		TTL: func(r *http.Request) time.Duration {
			if strings.HasPrefix(r.URL.Path, "/payments") {
				return 7 * 24 * time.Hour
			}
			return 0
		},
		ExpiresHeader: "Idempotency-Expires",
	})(&charge{})

	first := serve(h, post("/payments", "pay", "a"))
	want := idemtest.T0.Add(7 * 24 * time.Hour).Format(http.TimeFormat)
	require.Equal(t, want, first.Header().Get("Idempotency-Expires"))
	serve(h, post("/orders", "ord", "a"))

	clock.Advance(3 * 24 * time.Hour)
	w := serve(h, post("/payments", "pay", "a"))
	require.Equal(t, "true", w.Header().Get("Idempotent-Replayed"))
	require.Equal(t, want, w.Header().Get("Idempotency-Expires"), "the replay advertises the same expiry")
	w = serve(h, post("/orders", "ord", "a"))
	require.Empty(t, w.Header().Get("Idempotent-Replayed"), "the 24h default has passed: the key is new again")

	clock.Advance(4*24*time.Hour + time.Second)
	w = serve(h, post("/payments", "pay", "a"))
	require.Empty(t, w.Header().Get("Idempotent-Replayed"), "7 days have passed")
}

func TestLeaseRenewedWhileHandlerRuns(t *testing.T) {
	clock := idemtest.NewClock()
	s := openStore(t, &idem.Options{Now: clock.Now})
	const lease = 30 * time.Millisecond // renewed every 10ms of real time
	started, release := make(chan struct{}), make(chan struct{})
	var runs atomic.Int64
	var handlerErr atomic.Value
	h := idemhttp.New(s, &idemhttp.Options{LeaseTTL: lease})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		close(started)
		select {
		case <-release:
		case <-r.Context().Done():
			handlerErr.Store(context.Cause(r.Context()))
		}
		w.WriteHeader(http.StatusCreated)
	}))
	done := make(chan int)
	go func() { done <- serve(h, post("/slow", "k", "a")).Code }()
	<-started

	// Move the store's clock well past the lease, a bit at a time, waiting
	// after each step for a renewal to carry the lease past the new now.
	for range 20 {
		clock.Advance(lease * 2 / 3)
		require.Eventually(t, func() bool {
			rec := onlyRecord(t, s)
			return rec.LeaseUntil.After(clock.Now().Add(lease / 2))
		}, 5*time.Second, time.Millisecond)
	}
	// 400ms of store time later, with a 30ms lease, the key is still held.
	requireRecProblem(t, serve(h, post("/slow", "k", "a")), http.StatusConflict, idemhttp.ProblemInProgress)
	close(release)
	require.Equal(t, http.StatusCreated, <-done)
	require.Nil(t, handlerErr.Load())
	require.Equal(t, "true", serve(h, post("/slow", "k", "a")).Header().Get("Idempotent-Replayed"))
	require.EqualValues(t, 1, runs.Load())
}

func TestLeaseLostCancelsHandler(t *testing.T) {
	s := openStore(t, nil)
	started := make(chan struct{})
	var cause atomic.Value
	h := idemhttp.New(s, &idemhttp.Options{LeaseTTL: 30 * time.Millisecond})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		cause.Store(context.Cause(r.Context()))
		w.WriteHeader(http.StatusCreated)
	}))
	done := make(chan struct{})
	go func() { serve(h, post("/slow", "k", "a")); close(done) }()
	<-started
	// Someone (an operator with `idem delete`) removes the key.
	rec := onlyRecord(t, s)
	require.NoError(t, s.Delete(context.Background(), rec.Key))
	<-done
	require.True(t, errors.Is(cause.Load().(error), idem.ErrLeaseLost), "cause: %v", cause.Load())
}

func TestCorruptStoredResponse(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, nil)(c)
	serve(h, post("/payments", "k", "a"))
	rec := onlyRecord(t, s)

	// Rewrite the key's outcome with bytes that are not a stored response.
	ctx := context.Background()
	require.NoError(t, s.Delete(ctx, rec.Key))
	lease, _, err := s.Begin(ctx, rec.Key, idemhttp.Fingerprint(http.MethodPost, "/payments", []byte("a"), false))
	require.NoError(t, err)
	require.NotNil(t, lease)
	require.NoError(t, lease.Complete(ctx, []byte{9, 1, 2}))

	w := serve(h, post("/payments", "k", "a"))
	requireRecProblem(t, w, http.StatusInternalServerError, idemhttp.ProblemCorrupt, "cannot be decoded")
	require.EqualValues(t, 1, c.runs.Load())
}

func TestMisconfigurationPanics(t *testing.T) {
	s := openStore(t, nil)
	for name, o := range map[string]*idemhttp.Options{
		"no methods":     {Methods: []string{}},
		"lower method":   {Methods: []string{"post"}},
		"negative body":  {MaxBodyBytes: -1},
		"negative lease": {LeaseTTL: -time.Second},
		"bad header":     {Header: "Idempotency Key"},
		"bad expires":    {ExpiresHeader: "a:b"},
	} {
		require.Panics(t, func() { idemhttp.New(s, o) }, name)
	}
	require.Panics(t, func() { idemhttp.New(nil, nil) })
	require.NotPanics(t, func() { idemhttp.New(s, nil) })
}

type failingBody struct{ sent bool }

func (b *failingBody) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		return copy(p, `{"amount":`), nil
	}
	return 0, errors.New("connection reset by peer")
}

// A body that breaks off is a 400 that says so, and the handler never runs.
func TestBodyUnreadable(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, nil)(c)
	r := httptest.NewRequest(http.MethodPost, "/payments", &failingBody{})
	r.Header.Set("Idempotency-Key", "k")
	requireRecProblem(t, serve(h, r), http.StatusBadRequest, idemhttp.ProblemBodyUnreadable, "connection reset by peer", "not run")
	require.EqualValues(t, 0, c.runs.Load())
	// The key is not taken: the client's retry with the whole body runs.
	require.Equal(t, http.StatusCreated, serve(h, post("/payments", "k", "5000")).Code)
	require.EqualValues(t, 1, c.runs.Load())
}

// The fingerprint takes the path as sent: /a%2Fb and /a/b are different
// requests, so one key cannot serve both.
func TestEscapedPathInFingerprint(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, nil)(c)
	require.Equal(t, http.StatusCreated, serve(h, post("/files/a%2Fb", "k", "x")).Code)
	requireRecProblem(t, serve(h, post("/files/a/b", "k", "x")), http.StatusUnprocessableEntity, idemhttp.ProblemKeyReused)
	require.Equal(t, "true", serve(h, post("/files/a%2Fb", "k", "x")).Header().Get("Idempotent-Replayed"))
	require.EqualValues(t, 1, c.runs.Load())
}
