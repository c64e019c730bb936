package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/idemadmin"
	"github.com/idemdb/idem/idemtest"
)

func TestDemo(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, demo(&storeFlags{data: t.TempDir()}, &out))
	s := out.String()
	require.Contains(t, s, "Attempt 1: no reply")
	require.Contains(t, s, "Attempt 2: completed (duplicate, returned cached): 201 Created, payment pay_000001")
	require.Contains(t, s, "Attempt 3: completed (duplicate, returned cached)")
	require.Contains(t, s, "Refused: 422")
	require.Equal(t, 2, strings.Count(s, "Charges made: 1\n"))
	require.Contains(t, s, "409 Conflict")
	require.Contains(t, s, `Charges made for "order-9c21-payment": 1`)
}

func TestServeStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	var logs bytes.Buffer
	go func() {
		done <- serve(ctx, serveConfig{store: &storeFlags{data: t.TempDir()}, addr: "127.0.0.1:0"}, &logs)
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	require.Contains(t, logs.String(), "listening")
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// startServe runs serve with cfg and returns once cfg.addr answers. stop
// ends it and checks that it stopped cleanly; the test's end calls it too.
// The server logs into the returned buffer.
func startServe(t *testing.T, cfg serveConfig) (logs *idemtest.SyncBuffer, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logs = &idemtest.SyncBuffer{}
	go func() { done <- serve(ctx, cfg, logs) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done, logs.String())
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + cfg.addr + "/payments/none")
		if err == nil {
			resp.Body.Close()
			require.Equal(t, http.StatusNotFound, resp.StatusCode)
			return logs, stop
		}
		select {
		case err := <-done:
			t.Fatalf("serve ended: %v\n%s", err, logs)
		default:
		}
		require.True(t, time.Now().Before(deadline), "serve did not answer on %s: %v\n%s", cfg.addr, err, logs)
		time.Sleep(20 * time.Millisecond)
	}
}

// getBody fetches url and returns its status and body.
func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// checkAdmin checks the admin endpoint at admin after one payment (one
// lease, completed) and one replay made through the server.
func checkAdmin(t *testing.T, admin string) {
	t.Helper()
	code, metrics := getBody(t, "http://"+admin+"/metrics")
	require.Equal(t, http.StatusOK, code, metrics)
	for _, m := range []string{
		`idem_requests_total{outcome="lease"} 1`,
		`idem_requests_total{outcome="replay"} 1`,
		`idem_leases_ended_total{how="completed"} 1`,
		`idem_records{state="completed"} 1`,
		`idem_operation_duration_seconds_count{op="begin",outcome="lease"} 1`,
		`idem_operation_duration_seconds_count{op="complete",outcome="ok"} 1`,
	} {
		assert.Contains(t, metrics, m+"\n")
	}

	code, body := getBody(t, "http://"+admin+"/admin/stats")
	require.Equal(t, http.StatusOK, code, body)
	var st idemadmin.Stats
	require.NoError(t, json.Unmarshal([]byte(body), &st), body)
	assert.Equal(t, idemadmin.RecordCounts{Completed: 1}, st.Records)
	require.NotNil(t, st.Counters, body)
	assert.Equal(t, uint64(1), st.Counters.Leases)
	assert.Equal(t, uint64(1), st.Counters.Replays)

	code, _ = getBody(t, "http://"+admin+"/payments/none")
	assert.Equal(t, http.StatusNotFound, code, "the API is not on the admin address")
}

// TestServeAdmin runs idem serve with -admin on free loopback ports: after
// a payment and its replay, /metrics and /admin/stats report them, and the
// admin endpoint stops with the server.
func TestServeAdmin(t *testing.T) {
	addr, admin := freeAddr(t), freeAddr(t)
	logs, stop := startServe(t, serveConfig{store: &storeFlags{data: t.TempDir()}, addr: addr, admin: admin})
	assert.Contains(t, logs.String(), "server=admin addr="+admin)
	code, _ := getBody(t, "http://"+addr+"/metrics")
	assert.Equal(t, http.StatusNotFound, code, "metrics are not on the public address")

	resp, first := postPayment(t, addr, "order-1")
	require.Equal(t, http.StatusCreated, resp.StatusCode, string(first))
	resp, _ = postPayment(t, addr, "order-1")
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
	checkAdmin(t, admin)

	stop()
	_, err := http.Get("http://" + admin + "/metrics")
	require.Error(t, err, "the admin endpoint stops with the server")
	assert.Contains(t, logs.String(), "shutting down")
}

// TestServeAdminBusy: an admin address that is taken is an error naming
// it, and the API does not start without it.
func TestServeAdminBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	addr := freeAddr(t)
	err = serve(context.Background(), serveConfig{store: &storeFlags{data: t.TempDir()}, addr: addr, admin: ln.Addr().String()}, io.Discard)
	require.ErrorContains(t, err, "admin: listen tcp "+ln.Addr().String())
	l2, err := net.Listen("tcp", addr)
	require.NoError(t, err, "the API's listener was closed")
	l2.Close()
}

// postPayment sends one payment with key to the server at addr.
func postPayment(t *testing.T, addr, key string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/payments", strings.NewReader(`{"amount":5000,"currency":"USD"}`))
	require.NoError(t, err)
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("Authorization", "Bearer test")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

// setTimeouts sets idem serve's HTTP timeouts for the test.
func setTimeouts(t *testing.T, header, read, idle time.Duration) {
	h, r, i := serveHeaderTimeout, serveReadTimeout, serveIdleTimeout
	serveHeaderTimeout, serveReadTimeout, serveIdleTimeout = header, read, idle
	t.Cleanup(func() { serveHeaderTimeout, serveReadTimeout, serveIdleTimeout = h, r, i })
}

// closedWithin reports how long the server took to close conn, reading
// and discarding what it sends, or fails the test after limit.
func closedWithin(t *testing.T, conn net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	require.NoError(t, conn.SetReadDeadline(start.Add(limit)))
	_, err := io.Copy(io.Discard, conn)
	elapsed := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server held the connection for %v", elapsed)
	}
	return elapsed
}

// A client that sends a request's headers and part of its body, then
// stalls, has its connection closed after the read timeout, on the API
// and on the admin endpoint alike.
func TestServeStalledBody(t *testing.T) {
	const timeout = 300 * time.Millisecond
	setTimeouts(t, time.Minute, timeout, time.Minute)
	addr, admin := freeAddr(t), freeAddr(t)
	startServe(t, serveConfig{store: &storeFlags{data: t.TempDir()}, addr: addr, admin: admin, repairs: true})
	for _, c := range []struct{ addr, path string }{{addr, "/payments"}, {admin, "/admin/release/k"}} {
		conn, err := net.Dial("tcp", c.addr)
		require.NoError(t, err)
		defer conn.Close()
		_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"+
			"Idempotency-Key: stalled\r\nAuthorization: Bearer t\r\n\r\n{\"amount\": 50", c.path, c.addr)
		require.NoError(t, err)
		elapsed := closedWithin(t, conn, 10*timeout)
		assert.Less(t, elapsed, 5*timeout, c.path)
	}
}

// A connection left idle after a request is closed after the idle
// timeout, on the API and on the admin endpoint alike.
func TestServeIdle(t *testing.T) {
	const timeout = 300 * time.Millisecond
	setTimeouts(t, time.Minute, time.Minute, timeout)
	addr, admin := freeAddr(t), freeAddr(t)
	startServe(t, serveConfig{store: &storeFlags{data: t.TempDir()}, addr: addr, admin: admin})
	for _, c := range []struct{ addr, path string }{{addr, "/payments/none"}, {admin, "/admin/stats"}} {
		conn, err := net.Dial("tcp", c.addr)
		require.NoError(t, err)
		defer conn.Close()
		_, err = fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", c.path, c.addr)
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err)
		_, err = io.Copy(io.Discard, resp.Body)
		require.NoError(t, err)
		resp.Body.Close()
		require.False(t, resp.Close, "a keep-alive connection")
		elapsed := closedWithin(t, conn, 10*timeout)
		assert.Less(t, elapsed, 5*timeout, c.path)
	}
}

// The admin endpoint of idem serve answers its own address and loopback,
// and the names -admin-hosts adds; a request for another host, such as a
// name rebound to its address, gets 421 on /admin/ and on /metrics.
func TestServeAdminHosts(t *testing.T) {
	addr, admin := freeAddr(t), freeAddr(t)
	startServe(t, serveConfig{store: &storeFlags{data: t.TempDir()}, addr: addr, admin: admin, adminHosts: "ops.internal, admin.example"})
	_, port, err := net.SplitHostPort(admin)
	require.NoError(t, err)
	for host, want := range map[string]int{
		admin:                       http.StatusOK,
		"localhost:" + port:         http.StatusOK,
		"ops.internal:" + port:      http.StatusOK,
		"admin.example":             http.StatusOK,
		"evil.example:" + port:      http.StatusMisdirectedRequest,
		"ops.internal.evil.example": http.StatusMisdirectedRequest,
	} {
		for _, path := range []string{"/admin/stats", "/metrics"} {
			req, err := http.NewRequest(http.MethodGet, "http://"+admin+path, nil)
			require.NoError(t, err)
			req.Host = host
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, want, resp.StatusCode, "%s %s", host, path)
		}
	}
	assert.ElementsMatch(t, []string{"0.0.0.0", mustHostname(t), "a"}, adminHosts(":9090", "a,"))
	assert.ElementsMatch(t, []string{"0.0.0.0", mustHostname(t)}, adminHosts("[::]:9090", ""))
	assert.Equal(t, []string{"10.0.0.5"}, adminHosts("10.0.0.5:9090", ""))
}

func mustHostname(t *testing.T) string {
	name, err := os.Hostname()
	require.NoError(t, err)
	return name
}
