package idemhttp_test

import (
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/idemhttp"
)

// With WaitFor, duplicates that arrive while the first request runs wait
// for its outcome and get the replay, not a 409; the handler runs once.
// The added latency (from the first request's end to each duplicate's
// answer) is logged.
func TestWaitForFirstRequest(t *testing.T) {
	s := openStore(t, nil)
	started, release := make(chan struct{}), make(chan struct{})
	var runs atomic.Int64
	h := idemhttp.New(s, &idemhttp.Options{WaitFor: 10 * time.Second})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) == 1 {
			close(started)
			<-release
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte("payment 1"))
	}))
	first := make(chan int)
	go func() { first <- serve(h, post("/pay", "k", "a")).Code }()
	<-started

	const n = 32
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ended time.Time
	var lat []time.Duration
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := serve(h, post("/pay", "k", "a"))
			d := time.Now()
			assert.Equal(t, http.StatusCreated, w.Code)
			assert.Equal(t, "true", w.Header().Get("Idempotent-Replayed"))
			assert.Equal(t, "payment 1", w.Body.String())
			mu.Lock()
			lat = append(lat, d.Sub(ended))
			mu.Unlock()
		}()
	}
	time.Sleep(50 * time.Millisecond) // most of them wait by now; the rest find the outcome stored
	mu.Lock()
	ended = time.Now()
	mu.Unlock()
	close(release)
	require.Equal(t, http.StatusCreated, <-first)
	wg.Wait()
	assert.EqualValues(t, 1, runs.Load())
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("latency added after the first request ended: p50 %v, max %v (%d waiters)", lat[len(lat)/2], lat[len(lat)-1], n)
}

// The wait is bounded: past WaitFor the duplicate gets the 409 it would
// have got at once.
func TestWaitForBound(t *testing.T) {
	s := openStore(t, nil)
	started, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	h := idemhttp.New(s, &idemhttp.Options{WaitFor: 50 * time.Millisecond})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
	}))
	go serve(h, post("/pay", "k", "a"))
	<-started
	begin := time.Now()
	requireRecProblem(t, serve(h, post("/pay", "k", "a")), http.StatusConflict, idemhttp.ProblemInProgress)
	assert.GreaterOrEqual(t, time.Since(begin), 50*time.Millisecond)
	assert.Panics(t, func() { idemhttp.New(s, &idemhttp.Options{WaitFor: -time.Second}) })
}
