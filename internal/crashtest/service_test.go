package crashtest_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// child is one run of a crash child process.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser // held open while the child should live
	addr  string         // where it listens, host:port
	done  chan struct{}  // closed once the process has exited
	err   error          // cmd.Wait's answer, once done is closed
}

// startChild starts the test binary as the crash child role in dir and
// waits until it listens.
func startChild(role, dir string, env []string) (*child, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestMain_crashChild$", "-test.v=false", "-test.count=1")
	cmd.Env = append(append(os.Environ(), envRole+"="+role, envDir+"="+dir), env...)
	stderr, err := os.OpenFile(filepath.Join(dir, "stderr.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	defer stderr.Close() // the child has its own descriptor
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				addrc <- a
			}
		}
		c.err = cmd.Wait()
		close(c.done)
	}()
	select {
	case c.addr = <-addrc:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("%s exited before it listened: %v", role, c.err)
	case <-time.After(time.Minute):
		c.kill()
		return nil, fmt.Errorf("%s not listening after a minute", role)
	}
}

// kill SIGKILLs the child and waits until it is gone.
func (c *child) kill() {
	_ = c.cmd.Process.Kill() // an error means it has exited already
	<-c.done
}

// service is a crash child that the test kills and restarts on the same
// directory. Its methods other than url are for the test's goroutine.
type service struct {
	t    *testing.T
	role string
	dir  string
	env  []string

	cur *child
	url atomic.Pointer[string] // the running child's base URL, for the clients
}

// newService starts role in dir, and kills it when the test ends, passed
// or not.
func newService(t *testing.T, role, dir string, env ...string) *service {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &service{t: t, role: role, dir: dir, env: env}
	t.Cleanup(func() {
		if s.cur != nil {
			s.cur.kill()
		}
	})
	s.start()
	return s
}

func (s *service) start() {
	s.t.Helper()
	c, err := startChild(s.role, s.dir, s.env)
	if err != nil {
		s.t.Fatalf("%v; its stderr ends with:\n%s", err, s.stderrTail())
	}
	s.cur = c
	u := "http://" + c.addr
	s.url.Store(&u)
}

// kill SIGKILLs the running child, after checking it did not die on its own.
func (s *service) kill() {
	s.t.Helper()
	c := s.cur
	select {
	case <-c.done:
		s.t.Fatalf("%s exited on its own (%v); its stderr ends with:\n%s", s.role, c.err, s.stderrTail())
	default:
	}
	c.kill()
	s.cur = nil
}

// restart kills the child and starts another on the same directory.
func (s *service) restart() {
	s.t.Helper()
	s.kill()
	s.start()
}

func (s *service) base() string { return *s.url.Load() }

func (s *service) path(name string) string { return filepath.Join(s.dir, name) }

func (s *service) stderrTail() string {
	b, _ := os.ReadFile(s.path("stderr.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// checkStderr fails the test on a data race or panic that a child reported
// (killed children never exit with the race detector's status).
func (s *service) checkStderr() {
	s.t.Helper()
	b, _ := os.ReadFile(s.path("stderr.log"))
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "crash child:"} {
		if i := bytes.Index(b, []byte(bad)); i >= 0 {
			s.t.Errorf("%s child reported %q:\n%s", s.role, bad, b[i:min(len(b), i+4000)])
		}
	}
}

// logOther logs the lines of the children's stderr that do not hold any
// of expected.
func (s *service) logOther(expected ...string) {
	s.t.Helper()
	b, _ := os.ReadFile(s.path("stderr.log"))
	var other []string
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" && !slices.ContainsFunc(expected, func(e string) bool { return strings.Contains(l, e) }) {
			other = append(other, l)
		}
	}
	if len(other) > 0 {
		s.t.Logf("%s: %d other lines on stderr, e.g.:\n%s", s.role, len(other), strings.Join(other[:min(len(other), 20)], "\n"))
	}
}

// stderrCount returns how many lines of the children's stderr hold what.
func (s *service) stderrCount(what string) int {
	b, _ := os.ReadFile(s.path("stderr.log"))
	return bytes.Count(b, []byte(what))
}

// ack is the answer a client got for a payment: a 2xx.
type ack struct {
	status   int
	body     []byte
	receipt  receipt
	attempts int // requests sent until the answer came
}

// httpClient is a client of the crash children; the test closes its idle
// connections when it ends.
func httpClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// post sends p once to base with key p.Order.
func post(ctx context.Context, hc *http.Client, base string, p payment) (status int, h http.Header, body []byte, err error) {
	data, _ := json.Marshal(p)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/pay", bytes.NewReader(data))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Idempotency-Key", p.Order)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body, err
}

// pay sends p until it gets a 2xx, to wherever svc runs at the time:
// connection failures, 409 and 5xx are retried with the same key and body,
// as a payment client must. Any other answer is an error.
func pay(ctx context.Context, hc *http.Client, svc *service, p payment) (ack, error) {
	for attempt := 1; ; attempt++ {
		status, h, body, err := post(ctx, hc, svc.base(), p)
		wait := 10*time.Millisecond + rand.N(20*time.Millisecond)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return ack{}, fmt.Errorf("payment %s: no answer after %d attempts: %w", p.Order, attempt, err)
			}
			// The service is down or restarting, or died mid-answer.
		case status >= 200 && status < 300:
			a := ack{status: status, body: body, attempts: attempt}
			if err := json.Unmarshal(body, &a.receipt); err != nil || a.receipt.Order != p.Order {
				return ack{}, fmt.Errorf("payment %s: answer %d %q is not its receipt (%v)", p.Order, status, body, err)
			}
			return a, nil
		case status == http.StatusConflict:
			// Still running, or its holder died and the lease has not
			// lapsed yet.
			if s, err := strconv.Atoi(h.Get("Retry-After")); err == nil {
				wait = min(time.Duration(s)*time.Second, time.Second)
			}
		case status >= 500:
		default:
			return ack{}, fmt.Errorf("payment %s: %d %s", p.Order, status, body)
		}
		select {
		case <-ctx.Done():
			return ack{}, fmt.Errorf("payment %s: no 2xx after %d attempts: %w", p.Order, attempt, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// loadResult is what the clients of a crash run got.
type loadResult struct {
	acks    map[string]ack // by order (the key)
	amounts map[string]int64
	retries int // requests sent beyond the first of each payment
	kills   int
}

// clients is how many clients pay at once.
const clients = 16

// runLoad runs clients that each send payments one after another, each
// until it gets a 2xx, while svc is killed at random intervals of 0.5-1.5 s
// and restarted kills times. Then the clients finish the payment they are
// on and stop.
func runLoad(t *testing.T, svc *service, kills int) loadResult {
	t.Helper()
	hc := httpClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex // guards res, failed and gaveUp
		res     = loadResult{acks: map[string]ack{}, amounts: map[string]int64{}, kills: kills}
		failed  error // the first client's to give up
		gaveUp  int
		stopped = make(chan struct{}) // closed when a client gives up
		once    sync.Once
	)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; !stop.Load(); seq++ {
				p := payment{Order: fmt.Sprintf("c%02d-%05d", c, seq), Amount: int64(100 + rand.N(10000))}
				// Seconds are enough across a restart; more means the
				// service is stuck, and the test had better say so soon.
				pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
				a, err := pay(pctx, hc, svc, p)
				pcancel()
				mu.Lock()
				if err != nil {
					if failed == nil {
						failed = err
					}
					gaveUp++
					mu.Unlock()
					once.Do(func() { close(stopped) })
					return
				}
				res.acks[p.Order] = a
				res.amounts[p.Order] = p.Amount
				res.retries += a.attempts - 1
				mu.Unlock()
			}
		}()
	}
	defer func() {
		// Also when the test fails: clients retrying a dead service stop.
		stop.Store(true)
		cancel()
		wg.Wait()
	}()
kill:
	for range kills {
		select {
		case <-stopped:
			break kill
		case <-time.After(500*time.Millisecond + rand.N(time.Second)):
		}
		svc.restart()
	}
	// Let the last child answer for a moment, then stop the clients.
	select {
	case <-stopped:
	case <-time.After(500 * time.Millisecond):
	}
	stop.Store(true)
	wg.Wait()
	if failed != nil {
		t.Fatalf("%d clients gave up, the first: %v; the service's stderr ends with:\n%s", gaveUp, failed, svc.stderrTail())
	}
	return res
}

// checkReplays sends every acknowledged payment once more to svc and
// checks that the answer is a replay of what the client got.
func checkReplays(t *testing.T, svc *service, res loadResult) {
	t.Helper()
	hc := httpClient(t)
	ctx := context.Background()
	orders := make(chan string)
	var (
		mu   sync.Mutex
		bad  []string
		wg   sync.WaitGroup
		base = svc.base()
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range orders {
				a := res.acks[o]
				status, h, body, err := post(ctx, hc, base, payment{Order: o, Amount: res.amounts[o]})
				var why string
				switch {
				case err != nil:
					why = err.Error()
				case h.Get("Idempotent-Replayed") != "true":
					why = fmt.Sprintf("not a replay: ran again (%d %s), the client got %d %s", status, bytes.TrimSpace(body), a.status, bytes.TrimSpace(a.body))
				case status != a.status || !bytes.Equal(body, a.body):
					why = fmt.Sprintf("replayed %d %s, the client got %d %s", status, bytes.TrimSpace(body), a.status, bytes.TrimSpace(a.body))
				default:
					continue
				}
				mu.Lock()
				bad = append(bad, o+": "+why)
				mu.Unlock()
			}
		}()
	}
	for o := range res.acks {
		orders <- o
	}
	close(orders)
	wg.Wait()
	if len(bad) > 0 {
		t.Errorf("%d of %d acknowledged payments are not replayed as the client got them, e.g.:\n%s",
			len(bad), len(res.acks), strings.Join(bad[:min(len(bad), 10)], "\n"))
	}
}

// effect is a line of an effect log: a charge made for an order under the
// stored key key.
type effect struct{ order, charge, key string }

// readEffects reads a log of "order charge key" lines, by order.
func readEffects(t *testing.T, path string) map[string][]effect {
	t.Helper()
	byOrder := map[string][]effect{}
	for _, f := range readLog(t, path, 3) {
		byOrder[f[0]] = append(byOrder[f[0]], effect{f[0], f[1], f[2]})
	}
	return byOrder
}

// readLog returns the lines of the log at path, each split in its n fields.
func readLog(t *testing.T, path string, n int) [][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines [][]string
	for i, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		f := strings.Fields(l)
		if len(f) != n {
			t.Fatalf("%s:%d: %q is not %d fields", path, i+1, l, n)
		}
		lines = append(lines, f)
	}
	return lines
}

// killsFromEnv returns how many times a test kills its service: a few,
// or IDEM_CRASH_KILLS.
func killsFromEnv(t *testing.T) int {
	t.Helper()
	v := os.Getenv("IDEM_CRASH_KILLS")
	if v == "" {
		return 3
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("IDEM_CRASH_KILLS=%q is not a number of kills", v)
	}
	return n
}
