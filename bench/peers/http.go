package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime/pprof"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/idempotency"
	redisstorage "github.com/gofiber/storage/redis/v3"
	"github.com/valyala/fasthttp"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemhttp"
	"github.com/idemdb/idem/redisstore"
)

// httpWorkers is the number of concurrent connections of every HTTP row.
const httpWorkers = 16

var (
	reqBody  = []byte(`{"amount":5000,"currency":"USD"}`)
	respBody = []byte(`{"id":"pay_000001","amount":5000,"currency":"USD","status":"succeeded","created":"2026-01-02T03:04:05Z"}` + "\n")
)

// The handlers answer like a payment API: 201, three headers, a JSON
// body. Each counts its runs, so a row can check that every first request
// ran it and no replay did.

func netHandler(runs *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Location", "/payments/pay_000001")
		h.Set("Etag", `"v1"`)
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(respBody)
	})
}

func fiberHandler(runs *atomic.Int64) fiber.Handler {
	return func(c *fiber.Ctx) error {
		runs.Add(1)
		c.Set("Content-Type", "application/json")
		c.Set("Location", "/payments/pay_000001")
		c.Set("Etag", `"v1"`)
		return c.Status(http.StatusCreated).Send(respBody)
	}
}

// httpSide is one side of an HTTP row: a server on a loopback port, the
// client that loads it, and the handler's run count.
type httpSide struct {
	addr    string
	runs    atomic.Int64
	keys    *keyGen
	client  poster
	stop    func() error // stops the server
	cleanup func() error // closes what the middleware uses
}

func (s *httpSide) close() error {
	s.client.close()
	err := s.stop()
	if s.cleanup != nil {
		err = errors.Join(err, s.cleanup())
	}
	return err
}

// netSide serves mw(handler) with net/http, or the bare handler when mw
// is nil.
func (e *env) netSide(label string, mw func(http.Handler) http.Handler, cleanup func() error) *httpSide {
	s := &httpSide{keys: newKeyGen(httpWorkers), cleanup: cleanup}
	h := netHandler(&s.runs)
	if mw != nil {
		h = mw(h)
	}
	if e.profiling {
		inner := h
		labels := pprof.Labels("side", label)
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			pprof.Do(r.Context(), labels, func(context.Context) { inner.ServeHTTP(w, r) })
		})
	}
	srv := httptest.NewServer(h)
	s.addr = srv.Listener.Addr().String()
	s.stop = func() error { srv.Close(); return nil }
	s.client = e.newPoster(s.addr)
	return s
}

// fiberSide serves the handler with Fiber, behind mw when it is not nil.
func (e *env) fiberSide(label string, mw fiber.Handler, cleanup func() error) (*httpSide, error) {
	s := &httpSide{keys: newKeyGen(httpWorkers), cleanup: cleanup}
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	if e.profiling {
		labels := pprof.Labels("side", label)
		app.Use(func(c *fiber.Ctx) (err error) {
			pprof.Do(context.Background(), labels, func(context.Context) { err = c.Next() })
			return err
		})
	}
	if mw != nil {
		app.Use(mw)
	}
	app.Post("/payments", fiberHandler(&s.runs))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	served := make(chan error, 1)
	go func() { served <- app.Listener(ln) }()
	s.addr = ln.Addr().String()
	s.stop = func() error {
		err := app.ShutdownWithTimeout(5 * time.Second)
		return errors.Join(err, <-served)
	}
	s.client = e.newPoster(s.addr)
	return s, nil
}

// firstTarget sends every request with a new key and checks that none was
// a replay and that the handler ran once per request.
func firstTarget(s *httpSide) *target {
	return &target{
		op: func(w int) error {
			k := s.keys.next(w)
			replayed, err := s.client.post(k)
			if err == nil && replayed {
				err = fmt.Errorf("first request with key %q was answered as a replay", k)
			}
			return err
		},
		check: func() error {
			if sent, ran := s.keys.total(), s.runs.Load(); sent != ran {
				return fmt.Errorf("%d requests with new keys ran the handler %d times", sent, ran)
			}
			return nil
		},
		close: s.close,
	}
}

// replayTarget sends every request with one key, completed by one request
// before the timing. When marked, the replays must carry
// Idempotent-Replayed: true (idemhttp marks them; Fiber does not), and
// when replays is set the handler must never run again.
func replayTarget(s *httpSide, marked, replays bool) (*target, error) {
	key := s.keys.next(0)
	if replayed, err := s.client.post(key); err != nil || replayed {
		return nil, errors.Join(fmt.Errorf("first request of %q: replayed %v, error %v", key, replayed, err), s.close())
	}
	return &target{
		op: func(int) error {
			replayed, err := s.client.post(key)
			if err == nil && marked && !replayed {
				err = fmt.Errorf("key %q: not marked as a replay", key)
			}
			return err
		},
		check: func() error {
			if ran := s.runs.Load(); replays && ran != 1 {
				return fmt.Errorf("the handler ran %d times for one key", ran)
			}
			return nil
		},
		close: s.close,
	}, nil
}

// Sides of the HTTP rows. Stores are opened with their defaults.

// sideMaker builds one side; label names it in CPU profiles.
type sideMaker func(e *env, label string) (*httpSide, error)

func bareNet(e *env, label string) (*httpSide, error) { return e.netSide(label, nil, nil), nil }

func bareFiber(e *env, label string) (*httpSide, error) { return e.fiberSide(label, nil, nil) }

func idemEmbedded(opts *idem.Options) sideMaker {
	return func(e *env, label string) (*httpSide, error) {
		dir, err := e.tempDir("idemhttp")
		if err != nil {
			return nil, err
		}
		s, err := idem.Open(dir, opts)
		if err != nil {
			return nil, err
		}
		return e.netSide(label, idemhttp.New(s, nil), s.Close), nil
	}
}

func idemRedisHTTP(e *env, label string) (*httpSide, error) {
	rdb, err := e.newRedisClient()
	if err != nil {
		return nil, err
	}
	s, err := redisstore.Open(rdb, nil)
	if err != nil {
		return nil, errors.Join(err, rdb.Close())
	}
	return e.netSide(label, idemhttp.New(s, nil), func() error { return errors.Join(s.Close(), rdb.Close()) }), nil
}

func fiberMemoryMW(e *env, label string) (*httpSide, error) {
	return e.fiberSide(label, idempotency.New(), nil)
}

func fiberRedisMW(e *env, label string) (*httpSide, error) {
	rdb, err := e.newRedisClient()
	if err != nil {
		return nil, err
	}
	st := redisstorage.NewFromConnection(rdb) // its Close closes rdb
	return e.fiberSide(label, idempotency.New(idempotency.Config{Storage: st}), st.Close)
}

// httpRow builds a row of two HTTP sides, loaded alike: first requests
// (a new key every request) or replays (one key).
func httpRow(id string, replay bool, subject, baseline sideMaker, marked bool) func(*env) (*target, *target, error) {
	return func(e *env) (*target, *target, error) {
		var ts [2]*target
		for i, mk := range []sideMaker{subject, baseline} {
			s, err := mk(e, id+"/"+[]string{"subject", "baseline"}[i]+"-server")
			if err == nil && !replay {
				ts[i] = firstTarget(s)
			} else if err == nil {
				ts[i], err = replayTarget(s, marked && i == 0, i == 0)
			}
			if err != nil {
				if i == 1 {
					err = errors.Join(err, ts[0].close())
				}
				return nil, nil, err
			}
		}
		return ts[0], ts[1], nil
	}
}

func httpSpecs() []spec {
	const (
		netBare   = "net/http bare handler"
		fiberBare = "Fiber bare handler"
	)
	first := func(id, title, subject, baseline string, g promises, target float64, redis bool, sub, base sideMaker) spec {
		return spec{id: "first-" + id, group: "first", title: "first request (new key each), 16 connections: " + title,
			workers: httpWorkers, subject: subject, baseline: baseline, subjectG: g, baseG: nothing,
			target: target, redis: redis, fsync: g.Durable == "fsync", make: httpRow("first-"+id, false, sub, base, false)}
	}
	replay := func(id, title, subject, baseline string, g promises, target float64, redis, marked bool, sub, base sideMaker) spec {
		return spec{id: "replay-" + id, group: "replay", title: "replay (one key), 16 connections: " + title,
			workers: httpWorkers, subject: subject, baseline: baseline, subjectG: g, baseG: nothing,
			target: target, redis: redis, make: httpRow("replay-"+id, true, sub, base, marked)}
	}
	never := &idem.Options{Sync: idem.SyncNever}
	cached := &idem.Options{CacheSize: 64 << 20}
	return []spec{
		first("idem-durable", "idemhttp on the embedded store, durable default, vs a bare net/http handler",
			"idemhttp, embedded, durable (default)", netBare, idemFsync, 0.35, false, idemEmbedded(nil), bareNet),
		first("idem-never", "idemhttp on the embedded store with SyncNever vs a bare net/http handler",
			"idemhttp, embedded, SyncNever", netBare, idemOSCache, 0.5, false, idemEmbedded(never), bareNet),
		first("fiber-memory", "Fiber's idempotency middleware, default memory storage, vs bare Fiber",
			"Fiber idempotency, memory storage", fiberBare, fiberMemory, 0, false, fiberMemoryMW, bareFiber),
		first("idem-redis", "idemhttp on redisstore vs a bare net/http handler",
			"idemhttp, redisstore", netBare, idemRedis, 0, true, idemRedisHTTP, bareNet),
		first("fiber-redis", "Fiber's idempotency middleware, Redis storage, vs bare Fiber",
			"Fiber idempotency, Redis storage", fiberBare, fiberRedis, 0, true, fiberRedisMW, bareFiber),
		replay("idem", "idemhttp on the embedded store, default options, vs a bare net/http handler",
			"idemhttp, embedded, default options", netBare, idemFsync, 0.9, false, true, idemEmbedded(nil), bareNet),
		replay("idem-cache", "idemhttp on the embedded store with a 64 MiB read cache vs a bare net/http handler",
			"idemhttp, embedded, CacheSize 64 MiB", netBare, idemFsync, 0, false, true, idemEmbedded(cached), bareNet),
		replay("fiber-memory", "Fiber's idempotency middleware, memory storage, vs bare Fiber",
			"Fiber idempotency, memory storage", fiberBare, fiberMemory, 0, false, false, fiberMemoryMW, bareFiber),
		replay("idem-redis", "idemhttp on redisstore vs a bare net/http handler",
			"idemhttp, redisstore", netBare, idemRedis, 0, true, true, idemRedisHTTP, bareNet),
		replay("fiber-redis", "Fiber's idempotency middleware, Redis storage, vs bare Fiber",
			"Fiber idempotency, Redis storage", fiberBare, fiberRedis, 0, true, false, fiberRedisMW, bareFiber),
	}
}

// keyGen hands out 36-character keys (Fiber's default validation wants
// the length of a UUID), distinct per side, worker and request.
type keyGen struct {
	side  uint64
	count []paddedCount
}

type paddedCount struct {
	n uint64
	_ [56]byte // one cache line per worker
}

var (
	sides  atomic.Uint64
	runTag = uint64(time.Now().UnixNano())
)

func newKeyGen(workers int) *keyGen {
	return &keyGen{side: sides.Add(1), count: make([]paddedCount, workers)}
}

func (g *keyGen) next(w int) string {
	g.count[w].n++
	var b [36]byte
	hex(b[0:8], runTag)
	b[8] = '-'
	hex(b[9:13], g.side)
	b[13] = '-'
	hex(b[14:18], uint64(w))
	b[18] = '-'
	copy(b[19:23], "8000")
	b[23] = '-'
	hex(b[24:36], g.count[w].n)
	return string(b[:])
}

// total is the number of keys handed out; read it after the workers stop.
func (g *keyGen) total() int64 {
	var n uint64
	for i := range g.count {
		n += g.count[i].n
	}
	return int64(n)
}

// hex writes the low 4*len(b) bits of v into b as lowercase hex digits.
func hex(b []byte, v uint64) {
	const digits = "0123456789abcdef"
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = digits[v&15]
		v >>= 4
	}
}

// poster sends the payment request with an idempotency key (under both
// header names, idemhttp's Idempotency-Key and Fiber's X-Idempotency-Key,
// so every side gets the same bytes) and checks the answer is the
// handler's: 201 and its body. It reports whether the answer was marked
// Idempotent-Replayed: true.
type poster interface {
	post(key string) (replayed bool, err error)
	close()
}

func (e *env) newPoster(addr string) poster {
	if e.client == "fasthttp" {
		return &fastPoster{url: "http://" + addr + "/payments", c: &fasthttp.HostClient{
			Addr: addr, MaxConns: httpWorkers, MaxIdleConnDuration: time.Minute,
		}}
	}
	return &netPoster{url: "http://" + addr + "/payments", c: &http.Client{Transport: &http.Transport{
		DisableCompression: true, MaxIdleConns: httpWorkers, MaxIdleConnsPerHost: httpWorkers,
	}}}
}

// netPoster is a net/http client that keeps one connection alive per
// worker.
type netPoster struct {
	url string
	c   *http.Client
}

func (p *netPoster) post(key string) (bool, error) {
	req, err := http.NewRequest(http.MethodPost, p.url, bytes.NewReader(reqBody))
	if err != nil {
		return false, err
	}
	req.Header["Idempotency-Key"] = []string{key}
	req.Header["X-Idempotency-Key"] = []string{key}
	req.Header["Content-Type"] = []string{"application/json"}
	resp, err := p.c.Do(req)
	if err != nil {
		return false, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return false, err
	}
	if resp.StatusCode != http.StatusCreated || !bytes.Equal(body, respBody) {
		return false, fmt.Errorf("key %q: got %d %q, want 201 and the handler's body", key, resp.StatusCode, body)
	}
	return resp.Header.Get("Idempotent-Replayed") == "true", nil
}

func (p *netPoster) close() { p.c.CloseIdleConnections() }

// fastPoster is a fasthttp client with one connection per worker.
type fastPoster struct {
	url string
	c   *fasthttp.HostClient
}

func (p *fastPoster) post(key string) (bool, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(p.url)
	req.Header.SetMethod(http.MethodPost)
	req.Header.SetContentType("application/json")
	req.Header.Set("Idempotency-Key", key)
	req.Header.Set("X-Idempotency-Key", key)
	req.SetBodyRaw(reqBody)
	if err := p.c.Do(req, resp); err != nil {
		return false, err
	}
	if resp.StatusCode() != http.StatusCreated || !bytes.Equal(resp.Body(), respBody) {
		return false, fmt.Errorf("key %q: got %d %q, want 201 and the handler's body", key, resp.StatusCode(), resp.Body())
	}
	return string(resp.Header.Peek("Idempotent-Replayed")) == "true", nil
}

func (p *fastPoster) close() { p.c.CloseIdleConnections() }
