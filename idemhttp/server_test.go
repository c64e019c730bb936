package idemhttp_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/idemhttp"
)

// fidelityHandler answers like a payment API that cares about its headers:
// 201, Location, ETag, a custom header, gzip encoding and a binary body.
func fidelityHandler(runs *atomic.Int64) http.Handler {
	body := make([]byte, 0, 5000)
	for i := range 5000 {
		body = append(body, byte(i*7+i/256))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		time.Sleep(20 * time.Millisecond) // long enough for retries to overlap
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Encoding", "gzip")
		h.Set("Location", "/payments/pay_123")
		h.Set("ETag", `"v1-abc"`)
		h.Add("X-Custom", "one")
		h.Add("X-Custom", "two")
		h.Set("Cache-Control", "private")
		w.WriteHeader(http.StatusCreated)
		w.Write(body[:1000])
		w.Write(body[1000:])
	})
}

// rawPost sends a POST with key over a new connection to addr and returns
// the response exactly as it came off the wire.
func rawPost(t testing.TB, addr, key, body string) []byte {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"+
		"Idempotency-Key: "+key+"\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	require.NoError(t, err)
	return readAll(t, conn)
}

// withoutLines returns raw with the header lines named in names removed.
func withoutLines(raw []byte, names ...string) []byte {
	head, body, ok := bytes.Cut(raw, []byte("\r\n\r\n"))
	if !ok {
		return raw
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(head))
	for sc.Scan() {
		line := sc.Text()
		drop := false
		for _, n := range names {
			if strings.HasPrefix(strings.ToLower(line), strings.ToLower(n)+":") {
				drop = true
			}
		}
		if !drop {
			out.WriteString(line + "\r\n")
		}
	}
	out.WriteString("\r\n")
	out.Write(body)
	return out.Bytes()
}

func TestReplayFidelity(t *testing.T) {
	s := openStore(t, nil)
	var runs atomic.Int64
	srv := httptest.NewServer(idemhttp.New(s, nil)(fidelityHandler(&runs)))
	defer srv.Close()
	addr := srv.Listener.Addr().String()

	first := rawPost(t, addr, "k", "amount=5000")
	require.True(t, bytes.HasPrefix(first, []byte("HTTP/1.1 201 Created\r\n")), "%q", first[:40])
	require.NotContains(t, string(first), "Idempotent-Replayed")
	for range 3 {
		again := rawPost(t, addr, "k", "amount=5000")
		require.Contains(t, string(again), "\r\nIdempotent-Replayed: true\r\n")
		// Byte for byte, but for the replay marker and the Date the server
		// stamps on every message.
		require.Equal(t, string(withoutLines(first, "Date")), string(withoutLines(again, "Date", "Idempotent-Replayed")))
	}
	require.EqualValues(t, 1, runs.Load())
}

// TestConcurrentSameKey sends one key from 200 goroutines at once over
// real HTTP: the handler runs once, and every answer is either the
// response byte for byte or a 409.
func TestConcurrentSameKey(t *testing.T) {
	s := openStore(t, nil)
	var runs atomic.Int64
	srv := httptest.NewServer(idemhttp.New(s, nil)(fidelityHandler(&runs)))
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 200, DisableCompression: true}}
	defer client.CloseIdleConnections()

	type answer struct {
		status   int
		header   http.Header
		body     []byte
		replayed bool
	}
	send := func() (answer, error) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/payments", strings.NewReader("amount=5000"))
		req.Header.Set("Idempotency-Key", "same-key")
		resp, err := client.Do(req)
		if err != nil {
			return answer{}, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return answer{resp.StatusCode, resp.Header, b, resp.Header.Get("Idempotent-Replayed") == "true"}, err
	}
	// Each goroutine sends until it gets something other than a 409, and
	// keeps every answer.
	const n = 200
	answers := make([][]answer, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			for range 500 {
				a, err := send()
				if !assertNoError(t, err) {
					return
				}
				answers[i] = append(answers[i], a)
				if a.status != http.StatusConflict {
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	close(start)
	wg.Wait()
	require.EqualValues(t, 1, runs.Load(), "the handler ran exactly once")

	var original *answer
	for i := range answers {
		for j := range answers[i] {
			if a := &answers[i][j]; a.status == http.StatusCreated && !a.replayed {
				require.Nil(t, original, "two original (not replayed) answers")
				original = a
			}
		}
	}
	require.NotNil(t, original)
	var replays, conflicts int
	for i := range answers {
		require.NotEmpty(t, answers[i])
		require.NotEqual(t, http.StatusConflict, answers[i][len(answers[i])-1].status, "goroutine %d never got an answer", i)
		for j := range answers[i] {
			a := &answers[i][j]
			switch {
			case a.status == http.StatusConflict:
				conflicts++
				requireProblem(t, a.status, a.header, a.body, idemhttp.ProblemInProgress)
				require.NotEmpty(t, a.header.Get("Retry-After"))
			case a.replayed:
				replays++
				require.Equal(t, original.status, a.status)
				require.Equal(t, original.body, a.body)
				h := a.header.Clone()
				h.Del("Idempotent-Replayed")
				h.Del("Date")
				o := original.header.Clone()
				o.Del("Date")
				require.Equal(t, o, h)
			default:
				require.Same(t, original, a, "unexpected answer %d", a.status)
			}
		}
	}
	require.Equal(t, n-1, replays, "every other goroutine ended with a replay")
	require.Positive(t, conflicts, "some requests overlapped the running one")
	t.Logf("%d replays, %d conflicts", replays, conflicts)
}

func assertNoError(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}
