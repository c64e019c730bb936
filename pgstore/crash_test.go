//go:build unix

package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/pgtest"
	"github.com/idemdb/idem/pgstore"
)

// The crash test's child process is this test binary, run again with
// these variables set: the database URL and the unix socket to serve on.
// With crashModeEnv "do", the child charges outside the store's
// transaction (Store.Do around an INSERT of its own), as a service without
// CompleteTx would.
const (
	crashChildEnv  = "IDEM_PGSTORE_CRASH_CHILD"
	crashSocketEnv = "IDEM_PGSTORE_CRASH_SOCKET"
	crashModeEnv   = "IDEM_PGSTORE_CRASH_MODE"
)

// crashKillsEnv sets how many times TestExactlyOnceAcrossCrashes kills the
// server (default 3).
const crashKillsEnv = "IDEM_CRASH_KILLS"

// crashLease is the child's lease: a killed child's keys are taken over
// this long after its last renewal.
const crashLease = time.Second

// crashChild serves POST /pay/KEY: DoTx inserts a row into charges and
// completes the key in the same transaction (or, in mode "do", Do inserts
// the row and then completes the key). It runs until killed.
func crashChild() {
	ctx := context.Background()
	die := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(2)
	}
	pool, err := pgxpool.New(ctx, os.Getenv(crashChildEnv))
	if err != nil {
		die(err)
	}
	s, err := pgstore.Open(ctx, pool, &idem.Options{LeaseTTL: crashLease, GCInterval: -1})
	if err != nil {
		die(err)
	}
	sock := os.Getenv(crashSocketEnv)
	_ = os.Remove(sock) // left by the previous child, killed
	ln, err := net.Listen("unix", sock)
	if err != nil {
		die(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /pay/{key}", func(w http.ResponseWriter, r *http.Request) {
		key := r.PathValue("key")
		chargeOn := func(ctx context.Context, q interface {
			QueryRow(context.Context, string, ...any) pgx.Row
		}) ([]byte, error) {
			var id int64
			if err := q.QueryRow(ctx, "INSERT INTO charges (key, amount) VALUES ($1, 5000) RETURNING id", key).Scan(&id); err != nil {
				return nil, err
			}
			// Widen the window between the charge and the completion,
			// where a kill duplicates a charge made outside the store.
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			return fmt.Appendf(nil, "charge %d", id), nil
		}
		var (
			resp     []byte
			replayed bool
			err      error
		)
		if os.Getenv(crashModeEnv) == "do" {
			resp, replayed, err = s.Do(r.Context(), key, []byte("pay 5000"), func(ctx context.Context) ([]byte, error) {
				return chargeOn(ctx, pool)
			})
		} else {
			resp, replayed, err = pgstore.DoTx(r.Context(), s, pool, key, []byte("pay 5000"), func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
				return chargeOn(ctx, tx)
			})
		}
		switch {
		case errors.Is(err, idem.ErrInProgress):
			w.WriteHeader(http.StatusConflict)
		case err != nil:
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		default:
			w.Header().Set("Idempotent-Replayed", strconv.FormatBool(replayed))
			_, _ = w.Write(resp)
		}
	})
	die(http.Serve(ln, mux))
}

// child is one run of the crash child.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startChild(t *testing.T, url, sock, mode string) *child {
	t.Helper()
	_ = os.Remove(sock)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+url, crashSocketEnv+"="+sock, crashModeEnv+"="+mode)
	cmd.Stderr = os.Stderr
	// Killed with the test binary, should that die first; the kernel
	// sends the signal when the starting thread ends, so that thread is
	// kept until the child exits.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c := &child{cmd: cmd, done: make(chan struct{})}
	started := make(chan error)
	go func() {
		runtime.LockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			_ = cmd.Wait()
		}
		close(c.done)
	}()
	require.NoError(t, <-started)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if conn, err := net.Dial("unix", sock); err == nil {
			conn.Close()
			return c
		}
		select {
		case <-c.done:
			t.Fatalf("crash child exited at start")
		default:
		}
		if time.Now().After(deadline) {
			c.kill()
			t.Fatalf("crash child not serving on %s within 30s", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill ends the child with SIGKILL, as a crash or an OOM kill would, and
// waits for it.
func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
}

// TestExactlyOnceAcrossCrashes serves payments from a child process that
// charges (a row in charges) and completes the key in one transaction
// (DoTx), and kills it with SIGKILL again and again while several clients
// retry the same keys until each has an answer. Every key must end with
// exactly one charge and a completed record, and every client must have
// been given that charge. The number of kills is IDEM_CRASH_KILLS (3 by
// default):
//
//	IDEM_CRASH_KILLS=20 go test -run TestExactlyOnceAcrossCrashes -v ./pgstore/
func TestExactlyOnceAcrossCrashes(t *testing.T) {
	duplicates := crashRun(t, "tx")
	assert.Zero(t, duplicates)
}

// TestCrashesOutsideTx is the same run with the charge committed on its
// own before the key is completed (Store.Do): a kill between the two
// makes a retry charge again. It only reports the duplicates, which
// depend on where the kills land; the log lines of the two tests, side by
// side, are the comparison.
func TestCrashesOutsideTx(t *testing.T) {
	duplicates := crashRun(t, "do")
	t.Logf("with the charge outside the store's transaction: %d duplicated charges", duplicates)
}

// crashRun runs the crash test with the child in mode ("tx" or "do") and
// returns the number of duplicated charges, having checked the rest.
func crashRun(t *testing.T, mode string) (duplicates int) {
	kills := 3
	if v := os.Getenv(crashKillsEnv); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, crashKillsEnv)
		kills = n
	}
	const clients = 6
	keys := 60 + 20*kills

	url := pgtest.DB(t)
	pool := newPool(t, url)
	_, err := pool.Exec(ctx, "CREATE TABLE charges (id bigserial PRIMARY KEY, key text NOT NULL, amount int NOT NULL)")
	require.NoError(t, err)
	sock := filepath.Join(t.TempDir(), "pay.sock")

	var mu sync.Mutex // protects cur
	cur := startChild(t, url, sock, mode)
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		cur.kill()
	})

	hc := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	defer hc.CloseIdleConnections()

	var (
		requests, firsts, replays, conflicts, unavailable, refused atomic.Int64
		killing                                                    = make(chan struct{}) // closed when the kills are done
	)
	// pay asks for key until it gets an answer.
	pay := func(key string) string {
		for {
			requests.Add(1)
			resp, err := hc.Post("http://child/pay/"+key, "text/plain", nil)
			if err != nil {
				refused.Add(1) // the child is down, or was killed mid-request
				time.Sleep(time.Duration(10+rand.IntN(20)) * time.Millisecond)
				continue
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case err != nil:
				refused.Add(1)
			case resp.StatusCode == http.StatusOK:
				if resp.Header.Get("Idempotent-Replayed") == "true" {
					replays.Add(1)
				} else {
					firsts.Add(1)
				}
				return string(body)
			case resp.StatusCode == http.StatusConflict:
				conflicts.Add(1)
			default:
				unavailable.Add(1)
			}
			time.Sleep(time.Duration(10+rand.IntN(20)) * time.Millisecond)
		}
	}

	answers := make([]map[string]string, clients)
	var wg sync.WaitGroup
	for c := range clients {
		answers[c] = map[string]string{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Every key once, in an order of this client's; then again
			// (replays) until the kills are done, so that every kill
			// lands under load.
			for round := 0; ; round++ {
				for _, i := range rand.Perm(keys) {
					key := fmt.Sprintf("pay-%04d", i)
					got := pay(key)
					if round == 0 {
						answers[c][key] = got
					} else if got != answers[c][key] {
						t.Errorf("client %d, key %s: answered %q, then %q", c, key, got, answers[c][key])
					}
				}
				select {
				case <-killing:
					return
				default:
				}
			}
		}()
	}

	for range kills {
		time.Sleep(time.Duration(150+rand.IntN(250)) * time.Millisecond)
		mu.Lock()
		cur.kill()
		cur = startChild(t, url, sock, mode)
		mu.Unlock()
	}
	close(killing)
	wg.Wait()

	// The outcome, from the database.
	s := storeOn(t, pool, nil, &idem.Options{GCInterval: -1})
	charged := map[string]int{}
	rows, err := pool.Query(ctx, "SELECT key, count(*) FROM charges GROUP BY key")
	require.NoError(t, err)
	for rows.Next() {
		var key string
		var n int
		require.NoError(t, rows.Scan(&key, &n))
		charged[key] = n
	}
	require.NoError(t, rows.Err())
	rerun := 0
	for i := range keys {
		key := fmt.Sprintf("pay-%04d", i)
		duplicates += max(charged[key]-1, 0)
		if mode == "tx" {
			assert.Equal(t, 1, charged[key], "charges for %s", key)
		} else {
			assert.Positive(t, charged[key], "charges for %s", key)
		}
		rec, err := s.Get(ctx, key)
		if !assert.NoError(t, err, key) {
			continue
		}
		assert.Equal(t, idem.StateCompleted, rec.State, key)
		if rec.Attempts > 1 {
			rerun++ // a killed run's charge was rolled back, and it ran again
		}
		if mode != "tx" {
			continue // which of the charges was answered is not known
		}
		var id int64
		require.NoError(t, pool.QueryRow(ctx, "SELECT id FROM charges WHERE key = $1 ORDER BY id LIMIT 1", key).Scan(&id))
		for c := range clients {
			assert.Equal(t, fmt.Sprintf("charge %d", id), answers[c][key], "client %d, key %s", c, key)
		}
		assert.Equal(t, fmt.Sprintf("charge %d", id), string(rec.Response), key)
	}
	t.Logf("%s: %d kills, %d keys, %d clients: %d requests; %d answered by a run, %d replays, %d in progress (409), %d errors (503), %d refused or cut; "+
		"%d keys run again after a kill; charges: %d rows for %d keys, %d duplicates",
		mode, kills, keys, clients, requests.Load(), firsts.Load(), replays.Load(), conflicts.Load(), unavailable.Load(), refused.Load(),
		rerun, sum(charged), len(charged), duplicates)
	return duplicates
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
