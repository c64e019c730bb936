package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/idemdb/idem/internal/payments"
	"github.com/idemdb/idem/redisstore"
)

func init() {
	register(&command{
		name:    "demo",
		summary: "pay 5000 USD three times over HTTP with one key and a flaky network: one charge (-postgres: and a charge committed with its record)",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			sf := addStoreFlags(fs)
			fs.Lookup("data").Usage = "data directory `DIR` (default: a fresh temporary one, removed afterwards)"
			fs.Lookup("redis-prefix").Usage = "Redis key `PREFIX`, with -redis (default: a fresh one under \"" + redisstore.DefaultPrefix + "demo-\", its records deleted afterwards)"
			fs.Lookup("postgres").Usage = "run on the Postgres database at `URL`, in a fresh schema dropped afterwards, and show a charge row and its record " +
				"committed in one transaction (pgstore.DoTx), also across a crash"
			return func(args []string, stdout, _ io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				return demo(sf, stdout)
			}
		},
	})
}

// errDropped is the simulated network losing the reply to the client.
var errDropped = errors.New("connection reset: reply lost")

// dropFirstReply is a client transport whose first reply is lost: the
// request reaches the server and runs, and the client sees an error.
type dropFirstReply struct {
	base    http.RoundTripper
	mu      sync.Mutex // protects dropped
	dropped bool
}

func (d *dropFirstReply) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := d.base.RoundTrip(r)
	d.mu.Lock()
	drop := !d.dropped && err == nil
	d.dropped = d.dropped || drop
	d.mu.Unlock()
	if !drop {
		return resp, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return nil, errDropped
}

// reply is what the demo's client saw.
type reply struct {
	status   int
	replayed bool
	body     []byte
	header   http.Header
}

func (r reply) String() string {
	var p struct {
		ID     string `json:"id"`
		Amount int64  `json:"amount"`
		Detail string `json:"detail"`
	}
	json.Unmarshal(r.body, &p)
	if p.ID != "" {
		return fmt.Sprintf("%d %s, payment %s of %d USD", r.status, http.StatusText(r.status), p.ID, p.Amount)
	}
	return fmt.Sprintf("%d %s: %s", r.status, http.StatusText(r.status), p.Detail)
}

func (r reply) outcome() string {
	if r.replayed {
		return "completed (duplicate, returned cached)"
	}
	return "completed"
}

func pay(ctx context.Context, c *http.Client, url, key string, amount int) (reply, error) {
	body := fmt.Appendf(nil, `{"amount": %d, "currency": "USD"}`, amount)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/payments", bytes.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer demo-merchant")
	req.Header.Set("Idempotency-Key", key)
	resp, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header.Get("Idempotent-Replayed") == "true", b, resp.Header}, err
}

// demo runs the demo on the store sf names. Without -data, -redis or
// -postgres it uses a temporary directory; with -redis but no
// -redis-prefix, a fresh prefix; with -postgres, a fresh schema, where it
// also shows pgstore.DoTx (demoTx). Each is removed afterwards, so that
// the demo can run again: on a store it ran on before, the first attempt
// would be a replay.
func demo(sf *storeFlags, w io.Writer) (err error) {
	f := *sf
	fresh := false
	var pg *demoPostgres
	switch {
	case f.postgres != "":
		if err := f.check(); err != nil {
			return err
		}
		if pg, err = openDemoPostgres(&f); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, pg.close()) }()
	case f.data == "" && f.redis == "":
		tmp, err := os.MkdirTemp("", "idem-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		f.data = tmp
	case f.redis != "" && f.redisPrefix == "":
		f.redisPrefix = fmt.Sprintf("%sdemo-%s:", redisstore.DefaultPrefix, rand.Text()[:10])
		fresh = true
	}
	s := pgStore(pg)
	if s == nil {
		if s, err = f.open(nil); err != nil {
			return err
		}
		defer s.Close()
	}
	if fresh {
		defer func() {
			if _, perr := purge(context.Background(), s, ""); perr != nil {
				err = errors.Join(err, fmt.Errorf("removing the demo's records under %q: %w", f.redisPrefix, perr))
			}
		}()
	}

	// The payments API of `idem serve`, on a loopback port.
	api := payments.NewAPI()
	api.Delay = 200 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: newServeHandler(s, api, slog.New(slog.DiscardHandler)), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	url := "http://" + ln.Addr().String()
	ctx := context.Background()
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	flaky := &http.Client{Transport: &dropFirstReply{base: base}}
	client := &http.Client{Transport: base}

	const key = "order-7f3a-payment"
	where := f.String()
	if pg != nil {
		where += ", schema " + pg.schema + ", dropped afterwards"
	}
	fmt.Fprintf(w, "Paying 5000 USD with idempotency key %q to %s (%s)\n", key, url, where)
	for attempt := 1; attempt <= 3; attempt++ {
		r, err := pay(ctx, flaky, url, key, 5000)
		if errors.Is(err, errDropped) {
			fmt.Fprintf(w, "Attempt %d: no reply (%v); retrying with the same key\n", attempt, err)
			continue
		}
		if err != nil {
			return fmt.Errorf("attempt %d: %w", attempt, err)
		}
		if r.status != http.StatusCreated {
			return fmt.Errorf("attempt %d: %v", attempt, r)
		}
		fmt.Fprintf(w, "Attempt %d: %s: %v\n", attempt, r.outcome(), r)
	}
	charges := api.Charges()
	fmt.Fprintf(w, "Charges made: %d\n", charges)

	fmt.Fprintf(w, "\nReusing key %q for 7000 USD:\n", key)
	r, err := pay(ctx, client, url, key, 7000)
	if err != nil {
		return err
	}
	if r.status != http.StatusUnprocessableEntity {
		return fmt.Errorf("a reused key was not refused: %v", r)
	}
	fmt.Fprintf(w, "Refused: %v\n", r)
	charges = api.Charges()
	fmt.Fprintf(w, "Charges made: %d\n", charges)
	if charges != 1 {
		return fmt.Errorf("%d charges made for key %q, want 1", charges, key)
	}

	const key2 = "order-9c21-payment"
	fmt.Fprintf(w, "\nTwo concurrent requests paying 5000 USD with key %q:\n", key2)
	var wg sync.WaitGroup
	var replies [2]reply
	var errs [2]error
	for i := range replies {
		wg.Go(func() { replies[i], errs[i] = pay(ctx, client, url, key2, 5000) })
	}
	wg.Wait()
	for i, r := range replies {
		name := string(rune('A' + i))
		switch {
		case errs[i] != nil:
			return fmt.Errorf("request %s: %w", name, errs[i])
		case r.status == http.StatusConflict:
			fmt.Fprintf(w, "Request %s: in progress elsewhere: 409 %s (Retry-After: %ss)\n", name, http.StatusText(r.status), r.header.Get("Retry-After"))
			// The other request has finished now; the retry gets its answer.
			again, err := pay(ctx, client, url, key2, 5000)
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "Request %s, retried: %s: %v\n", name, again.outcome(), again)
		case r.status == http.StatusCreated:
			fmt.Fprintf(w, "Request %s: %s: %v\n", name, r.outcome(), r)
		default:
			return fmt.Errorf("request %s: %v", name, r)
		}
	}
	charges2 := api.Charges() - charges
	fmt.Fprintf(w, "Charges made for %q: %d\n", key2, charges2)
	if charges2 != 1 {
		return fmt.Errorf("%d charges made for key %q, want 1", charges2, key2)
	}
	if pg != nil {
		return demoTx(ctx, pg, w)
	}
	return nil
}
