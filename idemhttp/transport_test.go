package idemhttp_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/idemhttp"
)

// flakyDialer dials real loopback connections, but refuses the first
// refuse dials, and on the next drops connections' replies: the request
// reaches the server and runs, the response bytes arrive, and the client
// sees a reset instead.
type flakyDialer struct {
	mu     sync.Mutex
	refuse int // dials still to refuse
	drop   int // connections whose reply is still to be dropped
	dials  int
}

var errReset = errors.New("connection reset by flaky network")

func (d *flakyDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.dials++
	refuse := d.refuse > 0
	if refuse {
		d.refuse--
	}
	drop := !refuse && d.drop > 0
	if drop {
		d.drop--
	}
	d.mu.Unlock()
	if refuse {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("connection refused")}
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil || !drop {
		return c, err
	}
	return &dropConn{Conn: c}, nil
}

// dropConn waits for the reply, throws it away and fails the read.
type dropConn struct{ net.Conn }

func (c *dropConn) Read(b []byte) (int, error) {
	_, err := c.Conn.Read(b)
	c.Conn.Close()
	if err != nil {
		return 0, err
	}
	return 0, errReset
}

// keyRecorder is a handler behind the middleware that records the
// Idempotency-Key header values it ran with, as sent.
type keyRecorder struct {
	mu   sync.Mutex
	keys []string
}

func (k *keyRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k.mu.Lock()
	k.keys = append(k.keys, r.Header.Get("Idempotency-Key"))
	n := len(k.keys)
	k.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, "charged "+string(body)+" #"+string(rune('0'+n)))
}

func (k *keyRecorder) runs() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.keys...)
}

// quotedUUIDRE matches a random UUID sent as a Structured Field string.
var quotedUUIDRE = regexp.MustCompile(`^"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"$`)

func TestTransportRetriesWithOneKey(t *testing.T) {
	s := openStore(t, nil)
	k := &keyRecorder{}
	srv := httptest.NewServer(idemhttp.New(s, nil)(k))
	defer srv.Close()

	dialer := &flakyDialer{refuse: 2, drop: 1}
	base := &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true}
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: &idemhttp.Transport{Base: base, MinBackoff: time.Millisecond}}

	resp, err := client.Post(srv.URL+"/payments", "text/plain", strings.NewReader("5000"))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"), "the dropped reply is replayed")
	require.Equal(t, "charged 5000 #1", string(readAll(t, resp.Body)))

	keys := k.runs()
	require.Len(t, keys, 1, "one execution server-side despite the retries")
	require.Regexp(t, quotedUUIDRE, keys[0], "sent quoted")
	require.Equal(t, 4, dialer.dials, "two refused dials, one dropped reply, one replay")
}

func TestTransportKeepsCallersKey(t *testing.T) {
	s := openStore(t, nil)
	k := &keyRecorder{}
	srv := httptest.NewServer(idemhttp.New(s, nil)(k))
	defer srv.Close()
	tr := &idemhttp.Transport{MinBackoff: time.Millisecond}
	client := &http.Client{Transport: tr}
	// Bare or quoted, the caller's key is sent quoted; the second request
	// is a replay of the first.
	for _, v := range []string{"order-1", `"order-1"`} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/payments", strings.NewReader("5000"))
		req.Header.Set("Idempotency-Key", v)
		resp, err := client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, v, req.Header.Get("Idempotency-Key"), "the caller's request is not modified")
	}
	require.Equal(t, []string{`"order-1"`}, k.runs())

	// Without a key, each request gets its own.
	for range 2 {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/payments", strings.NewReader("5000"))
		resp, err := client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Empty(t, req.Header.Get("Idempotency-Key"), "the caller's request is not modified")
	}
	keys := k.runs()
	require.Len(t, keys, 3)
	require.NotEqual(t, keys[1], keys[2])

	// GET is neither keyed nor retried.
	resp, err := client.Get(srv.URL + "/payments")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, "", k.runs()[3])
}

func TestTransportWaitsOutConflict(t *testing.T) {
	s := openStore(t, nil)
	var runs atomic.Int64
	started, release := make(chan struct{}), make(chan struct{})
	h := idemhttp.New(s, &idemhttp.Options{LeaseTTL: time.Second})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) == 1 {
			close(started)
			<-release
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "done")
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()

	go func() {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/payments", strings.NewReader("5000"))
		req.Header.Set("Idempotency-Key", "k")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	// The running request ends while the client waits out Retry-After (1s).
	time.AfterFunc(100*time.Millisecond, func() { close(release) })
	client := &http.Client{Transport: &idemhttp.Transport{}}
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/payments", strings.NewReader("5000"))
	req.Header.Set("Idempotency-Key", "k")
	begin := time.Now()
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
	require.GreaterOrEqual(t, time.Since(begin), 900*time.Millisecond, "Retry-After was honoured")
	require.EqualValues(t, 1, runs.Load())
}

func TestTransportGivesUp(t *testing.T) {
	var attempts atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attempts.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "down")
	}))
	defer srv.Close()
	client := &http.Client{Transport: &idemhttp.Transport{MaxAttempts: 3, MinBackoff: time.Millisecond}}
	resp, err := client.Post(srv.URL, "text/plain", strings.NewReader("x"))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "the last answer is returned")
	require.Equal(t, "down", string(readAll(t, resp.Body)))
	require.EqualValues(t, 3, attempts.Load())

	// Network errors: the last one is returned, naming the key.
	dialer := &flakyDialer{refuse: 10}
	client = &http.Client{Transport: &idemhttp.Transport{Base: &http.Transport{DialContext: dialer.DialContext}, MaxAttempts: 3, MinBackoff: time.Millisecond}}
	_, err = client.Post(srv.URL, "text/plain", strings.NewReader("x"))
	require.ErrorContains(t, err, "giving up after 3 attempts")
	require.ErrorContains(t, err, "connection refused")
	require.Equal(t, 3, dialer.dials)
}

// A body without GetBody is kept in memory, up to MaxBufferedBody, and
// sent again on a retry; a larger one is sent once.
func TestTransportReplaysBodyWithoutGetBody(t *testing.T) {
	var bodies []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		n := len(bodies)
		mu.Unlock()
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	client := &http.Client{Transport: &idemhttp.Transport{MinBackoff: time.Millisecond, MaxBufferedBody: 10}}

	req, _ := http.NewRequest(http.MethodPost, srv.URL, io.NopCloser(strings.NewReader("0123456789")))
	require.Nil(t, req.GetBody)
	resp, err := client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		b := bodies
		bodies = nil
		return b
	}
	require.Equal(t, []string{"0123456789", "0123456789"}, got(), "the retry sent the whole body again")

	// One byte over the limit: sent once, whole, and the 503 returned.
	req, _ = http.NewRequest(http.MethodPost, srv.URL, io.NopCloser(strings.NewReader("0123456789A")))
	resp, err = client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, []string{"0123456789A"}, got())

	// A network error on such a body says why it was not retried.
	dialer := &flakyDialer{refuse: 10}
	client = &http.Client{Transport: &idemhttp.Transport{Base: &http.Transport{DialContext: dialer.DialContext}, MinBackoff: time.Millisecond, MaxBufferedBody: -1}}
	req, _ = http.NewRequest(http.MethodPost, "http://127.0.0.1:1/payments", io.NopCloser(strings.NewReader("x")))
	_, err = client.Do(req)
	require.ErrorContains(t, err, "no GetBody")
	require.Equal(t, 1, dialer.dials, "sent once")
}

func TestTransportStopsWithContext(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusConflict)
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	client := &http.Client{Transport: &idemhttp.Transport{MaxRetryAfter: time.Minute}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, strings.NewReader("x"))
	begin := time.Now()
	_, err := client.Do(req)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(begin), 5*time.Second)
}
