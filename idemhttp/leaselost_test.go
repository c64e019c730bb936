package idemhttp_test

import (
	"context"
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

// answer is a response as a client saw it.
type answer struct {
	status int
	header http.Header
	body   string
}

// send posts body with key to url and returns the answer.
func send(t testing.TB, url, key, body string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	return answer{resp.StatusCode, resp.Header, string(readAll(t, resp.Body))}
}

// sendAsync is send on another goroutine; the answer arrives on the
// channel.
func sendAsync(t testing.TB, url, key, body string) <-chan answer {
	c := make(chan answer, 1)
	go func() {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			c <- answer{body: err.Error()}
			return
		}
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			c <- answer{body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		c <- answer{resp.StatusCode, resp.Header, string(b)}
	}()
	return c
}

// pausable is a handler whose runs can be held: run n (from 1) waits for
// hold[n] to be closed, if there is one, after closing started[n].
type pausable struct {
	name    string
	runs    *atomic.Int64 // shared between instances
	started map[int64]chan struct{}
	hold    map[int64]chan struct{}
	status  int
}

func (p *pausable) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := p.runs.Add(1)
	if c, ok := p.started[n]; ok {
		close(c)
	}
	if c, ok := p.hold[n]; ok {
		<-c
	}
	status := p.status
	if status == 0 {
		status = http.StatusCreated
	}
	w.Header().Set("X-Run", fmt.Sprint(n))
	w.WriteHeader(status)
	fmt.Fprintf(w, "run %d on %s", n, p.name)
}

// TestLeaseLostNeverSendsRefusedResponse holds a handler past its lease
// (moving the store's clock), lets a retry take the key over, and only
// then lets the first handler finish: the store refuses its outcome, and
// its client gets what the key holds instead, never the refused body.
func TestLeaseLostNeverSendsRefusedResponse(t *testing.T) {
	const leaseTTL = 30 * time.Second // renewed every 10s of real time: not during the test
	setup := func(t *testing.T, status int) (*idem.Store, *idemtest.Clock, *pausable, string) {
		clock := idemtest.NewClock()
		s := openStore(t, &idem.Options{Now: clock.Now, LeaseTTL: leaseTTL})
		p := &pausable{name: "A", runs: new(atomic.Int64), status: status,
			started: map[int64]chan struct{}{1: make(chan struct{}), 2: make(chan struct{})},
			hold:    map[int64]chan struct{}{1: make(chan struct{}), 2: make(chan struct{})}}
		srv := httptest.NewServer(idemhttp.New(s, nil)(p))
		t.Cleanup(srv.Close)
		t.Cleanup(func() {
			for _, c := range p.hold {
				select {
				case <-c:
				default:
					close(c)
				}
			}
		})
		return s, clock, p, srv.URL + "/payments"
	}

	t.Run("newer completed: replayed", func(t *testing.T) {
		_, clock, p, url := setup(t, 0)
		close(p.hold[2])
		first := sendAsync(t, url, "k", "a")
		<-p.started[1]
		clock.Advance(leaseTTL + time.Second)

		newer := send(t, url, "k", "a")
		require.Equal(t, http.StatusCreated, newer.status)
		require.Equal(t, "run 2 on A", newer.body, "the retry took the lapsed key over")
		require.Empty(t, newer.header.Get("Idempotent-Replayed"))

		close(p.hold[1])
		stale := <-first
		require.Equal(t, http.StatusCreated, stale.status)
		require.Equal(t, "run 2 on A", stale.body, "never the refused body of run 1")
		require.Equal(t, "2", stale.header.Get("X-Run"))
		require.Equal(t, "true", stale.header.Get("Idempotent-Replayed"))

		again := send(t, url, "k", "a")
		require.Equal(t, "run 2 on A", again.body)
		require.EqualValues(t, 2, p.runs.Load())
	})

	t.Run("newer still running: 409", func(t *testing.T) {
		_, clock, p, url := setup(t, 0)
		first := sendAsync(t, url, "k", "a")
		<-p.started[1]
		clock.Advance(leaseTTL + time.Second)
		newer := sendAsync(t, url, "k", "a")
		<-p.started[2]

		close(p.hold[1])
		stale := <-first
		requireProblem(t, http.StatusConflict, stale.header, []byte(stale.body), idemhttp.ProblemInProgress, "still running")
		require.NotEmpty(t, stale.header.Get("Retry-After"))
		require.NotContains(t, stale.body, "run 1")

		close(p.hold[2])
		require.Equal(t, "run 2 on A", (<-newer).body)
		require.Equal(t, "true", send(t, url, "k", "a").header.Get("Idempotent-Replayed"))
	})

	t.Run("key deleted: 409 lease-lost", func(t *testing.T) {
		s, _, p, url := setup(t, 0)
		first := sendAsync(t, url, "k", "a")
		<-p.started[1]
		require.NoError(t, s.Delete(context.Background(), onlyRecord(t, s).Key))

		close(p.hold[1])
		stale := <-first
		requireProblem(t, http.StatusConflict, stale.header, []byte(stale.body), idemhttp.ProblemLeaseLost, "deleted", "runs the request again")
		require.Equal(t, "1", stale.header.Get("Retry-After"))
	})

	t.Run("newer failed retryably: 409 lease-lost", func(t *testing.T) {
		_, clock, p, url := setup(t, http.StatusBadGateway)
		close(p.hold[2])
		first := sendAsync(t, url, "k", "a")
		<-p.started[1]
		clock.Advance(leaseTTL + time.Second)
		require.Equal(t, "run 2 on A", send(t, url, "k", "a").body)

		close(p.hold[1])
		stale := <-first
		requireProblem(t, http.StatusConflict, stale.header, []byte(stale.body), idemhttp.ProblemLeaseLost, "may be retried")
		require.Empty(t, stale.header.Get("Idempotent-Replayed"))
	})
}
