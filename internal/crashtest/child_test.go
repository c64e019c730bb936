package crashtest_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemhttp"
)

// The environment of a crash child.
const (
	envRole       = "IDEM_CRASH_CHILD"      // rolePay, roleUpstream or roleDownstream
	envDir        = "IDEM_CRASH_DIR"        // its directory: the store, its logs
	envDownstream = "IDEM_CRASH_DOWNSTREAM" // the upstream's downstream, "http://host:port"
)

// The services a crash child can be.
const (
	// rolePay charges on an embedded store, with the charge written to
	// effects.log, outside the store.
	rolePay = "pay"
	// roleDownstream is rolePay, in the two-service set-up.
	roleDownstream = "downstream"
	// roleUpstream charges by calling the downstream with a key derived
	// from its own request's key (idem.SubKey), and logs every run of its
	// handler to calls.log.
	roleUpstream = "upstream"
)

// cardNetwork is how long a charge takes before it happens.
const cardNetwork = time.Millisecond

// payment is the body clients send to POST /pay; Order is also the
// request's idempotency key.
type payment struct {
	Order  string `json:"order"`
	Amount int64  `json:"amount"`
}

// receipt is what the charging services answer: Charge names the one
// effect the answer stands for.
type receipt struct {
	Order  string `json:"order"`
	Amount int64  `json:"amount"`
	Charge string `json:"charge"`
	// The upstream's answer only.
	SubKey             string `json:"subkey,omitempty"`              // the key it sent the downstream
	DownstreamReplayed bool   `json:"downstream_replayed,omitempty"` // the downstream answered with a replay
}

// TestMain_crashChild is the service the crash tests start, kill and
// restart: the test binary run again with envRole set.
func TestMain_crashChild(t *testing.T) {
	role := os.Getenv(envRole)
	if role == "" {
		t.Skip("run by the crash tests")
	}
	err := runChild(role, os.Getenv(envDir), os.Getenv(envDownstream))
	fmt.Fprintln(os.Stderr, "crash child:", err)
	os.Exit(3)
}

// runChild serves POST /pay as role behind idemhttp on an embedded store
// in dir, and prints "listening ADDR" once it accepts connections.
func runChild(role, dir, downstream string) error {
	go func() {
		// The parent holds our standard input open while it lives: if it
		// dies without killing us, we go too.
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// The default lease (30 s): the next process to open the directory
	// frees the keys whose holder was killed at once.
	opts := &idem.Options{GCInterval: -1, Logger: log}
	s, err := idem.Open(filepath.Join(dir, "store"), opts)
	if err != nil {
		return err
	}
	var h http.Handler
	switch role {
	case rolePay, roleDownstream:
		effects, err := openLog(filepath.Join(dir, "effects.log"))
		if err != nil {
			return err
		}
		h = &charger{effects: effects}
	case roleUpstream:
		calls, err := openLog(filepath.Join(dir, "calls.log"))
		if err != nil {
			return err
		}
		h = &upstream{
			down:  downstream,
			calls: calls,
			hc: &http.Client{
				Timeout: 30 * time.Second,
				Transport: &idemhttp.Transport{
					Base:        &http.Transport{MaxIdleConnsPerHost: 64},
					MaxAttempts: 20,
					MinBackoff:  10 * time.Millisecond,
					MaxBackoff:  time.Second,
				},
			},
		}
	default:
		return fmt.Errorf("unknown role %q", role)
	}
	mw := idemhttp.New(s, &idemhttp.Options{
		Required: func(*http.Request) bool { return true },
		Logger:   log,
	})
	mux := http.NewServeMux()
	mux.Handle("POST /pay", mw(h))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return srv.Serve(ln)
}

// effectLog is a file of side effects, one line each, on disk before add
// returns. It is safe for simultaneous use: each line is one write to a
// file opened with O_APPEND.
type effectLog struct{ f *os.File }

func openLog(path string) (*effectLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	return &effectLog{f}, nil
}

func (l *effectLog) add(fields ...string) error {
	if _, err := l.f.WriteString(strings.Join(fields, " ") + "\n"); err != nil {
		return err
	}
	return l.f.Sync()
}

// charger makes a charge per request: a line "order charge key" in its
// effect log, where key is the stored key idem.KeyFrom gives the handler.
type charger struct {
	effects *effectLog
	n       atomic.Int64 // charges made by this process
}

func (c *charger) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var p payment
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil || p.Order == "" {
		http.Error(w, fmt.Sprintf("bad payment: %v", err), http.StatusBadRequest)
		return
	}
	key, ok := idem.KeyFrom(r.Context())
	if !ok {
		http.Error(w, "idem.KeyFrom: no key in the handler's context", http.StatusBadRequest)
		return
	}
	time.Sleep(cardNetwork)
	charge := fmt.Sprintf("ch_%d_%d", os.Getpid(), c.n.Add(1))
	// The side effect, durable before the middleware completes the
	// record: a crash from here until Complete has synced runs it again.
	if err := c.effects.add(p.Order, charge, key); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeJSON(w, http.StatusCreated, receipt{Order: p.Order, Amount: p.Amount, Charge: charge})
}

// upstream charges through the downstream, with the key
// idem.SubKey(ctx, "charge"): the same on every run of the same request.
type upstream struct {
	down  string
	hc    *http.Client
	calls *effectLog // "order subkey" for every run of the handler
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var p payment
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil || p.Order == "" {
		http.Error(w, fmt.Sprintf("bad payment: %v", err), http.StatusBadRequest)
		return
	}
	sub := idem.SubKey(r.Context(), "charge")
	if sub == "" {
		http.Error(w, "idem.SubKey: no key in the handler's context", http.StatusBadRequest)
		return
	}
	if err := u.calls.add(p.Order, sub); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	body, _ := json.Marshal(p)
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, u.down+"/pay", bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	req.Header.Set("Idempotency-Key", sub)
	req.Header.Set("Content-Type", "application/json")
	resp, err := u.hc.Do(req)
	if err != nil {
		http.Error(w, "downstream: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	var rc receipt
	if err == nil && resp.StatusCode == http.StatusCreated {
		err = json.Unmarshal(data, &rc)
	}
	if err != nil || resp.StatusCode != http.StatusCreated {
		http.Error(w, fmt.Sprintf("downstream: %s %s (%v)", resp.Status, data, err), http.StatusBadGateway)
		return
	}
	writeJSON(w, http.StatusCreated, receipt{
		Order: p.Order, Amount: p.Amount, Charge: rc.Charge, SubKey: sub,
		DownstreamReplayed: resp.Header.Get("Idempotent-Replayed") == "true",
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
