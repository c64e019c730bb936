package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemhttp"
	"github.com/idemdb/idem/idemprom"
)

func init() {
	register(&command{
		name:    "serve",
		summary: "run a small payments API behind the Idempotency-Key middleware",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			cfg := serveConfig{store: addStoreFlags(fs)}
			cfg.store.defaultData = "idem-data"
			fs.Lookup("data").Usage = "data directory `DIR` of the embedded store (default idem-data, unless -redis is given)"
			fs.StringVar(&cfg.addr, "addr", "127.0.0.1:8080", "address to listen on")
			fs.StringVar(&cfg.admin, "admin", "", "serve /metrics (Prometheus) and the admin endpoints (/admin/records, /admin/stats) on `ADDR`, "+
				"a private address of its own (default: off)")
			fs.StringVar(&cfg.grpc, "grpc", "", "also serve the payments API over gRPC on `ADDR` (default: off)")
			fs.BoolVar(&cfg.repairs, "admin-repairs", false, "also serve the repairs (idem release, fail and delete with -admin) on the admin address: "+
				"whoever reaches them can make a request run twice")
			return func(args []string, _, stderr io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				if err := cfg.store.check(); err != nil {
					return err
				}
				if cfg.repairs && cfg.admin == "" {
					return usageErr("-admin-repairs needs -admin ADDR")
				}
				ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
				defer stop()
				return serve(ctx, cfg, stderr)
			}
		},
	})
}

// serveConfig is what idem serve runs.
type serveConfig struct {
	store *storeFlags // the embedded store or Redis
	addr  string      // the payments API's listen address
	admin string      // the admin endpoint's listen address; "" means none
	grpc  string      // the gRPC payments API's listen address; "" means none
	// repairs enables the admin endpoint's repairs.
	repairs bool
}

// serve runs the payments API, and the admin endpoint when cfg.admin is
// set, until ctx ends or one of them fails; then it shuts both down and
// closes the store.
func serve(ctx context.Context, cfg serveConfig, stderr io.Writer) error {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	opts := &idem.Options{Logger: log}
	var reg *prometheus.Registry
	if cfg.admin != "" {
		lat := idemprom.NewLatency()
		opts.Observer = lat
		reg = prometheus.NewRegistry()
		reg.MustRegister(lat)
	}
	s, err := cfg.store.open(opts)
	if err != nil {
		return err
	}
	defer s.Close()

	type server struct {
		name string
		ln   net.Listener
		srv  interface { // an *http.Server, or the gRPC server
			Serve(net.Listener) error
			Shutdown(context.Context) error
		}
	}
	newServer := func(name, addr string, h http.Handler) (server, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return server{}, fmt.Errorf("%s: %w", name, err)
		}
		return server{name, ln, &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelError),
		}}, nil
	}
	payments := newPaymentsAPI()
	api, err := newServer("api", cfg.addr, newServeHandler(s, payments, log))
	if err != nil {
		return err
	}
	servers := []server{api}
	if cfg.admin != "" {
		reg.MustRegister(idemprom.NewCollector(s, nil))
		admin, err := newServer("admin", cfg.admin, adminHandler(s, reg, cfg.repairs))
		if err != nil {
			api.ln.Close()
			return err
		}
		servers = append(servers, admin)
	}
	if cfg.grpc != "" {
		ln, err := net.Listen("tcp", cfg.grpc)
		if err != nil {
			for _, sv := range servers {
				sv.ln.Close()
			}
			return fmt.Errorf("grpc: %w", err)
		}
		servers = append(servers, server{"grpc", ln, newGRPCServer(s, payments, log)})
	}

	errc := make(chan error, len(servers))
	for _, sv := range servers {
		log.Info("idem serve: listening", "server", sv.name, "addr", sv.ln.Addr().String(), "store", cfg.store.String())
		go func() {
			if err := sv.srv.Serve(sv.ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", sv.name, err)
				return
			}
			errc <- nil
		}()
	}
	running := len(servers)
	var errs []error
	select {
	case err := <-errc: // one stopped on its own: stop the others too
		errs = append(errs, err)
		running--
	case <-ctx.Done():
	}
	log.Info("idem serve: shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, sv := range servers {
		if err := sv.srv.Shutdown(shutCtx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", sv.name, err))
		}
	}
	for ; running > 0; running-- {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

// paymentsTTL is how long payment outcomes are replayed.
const paymentsTTL = 7 * 24 * time.Hour

// newServeHandler returns the HTTP handler of `idem serve`: the payments
// API behind the idempotency middleware, with request logging. Listeners
// and stores are the caller's, so other front ends (an admin listener,
// another backend) can reuse it.
func newServeHandler(s *idem.Store, api *paymentsAPI, log *slog.Logger) http.Handler {
	mw := idemhttp.New(s, &idemhttp.Options{
		// Creating a payment without a key cannot be retried safely.
		Required:      func(*http.Request) bool { return true },
		Scope:         principal,
		CanonicalJSON: true,
		TTL: func(r *http.Request) time.Duration {
			if strings.HasPrefix(r.URL.Path, "/payments") {
				return paymentsTTL
			}
			return 0 // the store's default, 24 hours
		},
		ExpiresHeader: "Idempotency-Expires",
		Logger:        log,
	})
	mux := http.NewServeMux()
	mux.Handle("POST /payments", mw(http.HandlerFunc(api.create)))
	mux.HandleFunc("GET /payments/{id}", api.get)
	return logRequests(log, mux)
}

// principal scopes idempotency keys by the caller's credentials: a digest
// of the Authorization header, so tokens never reach the store. Anonymous
// callers share the empty scope.
func principal(r *http.Request) string {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(auth))
	return "auth-" + hex.EncodeToString(sum[:8])
}

// payment is one charge made by the payments API.
type payment struct {
	ID       string    `json:"id"`
	Amount   int64     `json:"amount"`
	Currency string    `json:"currency"`
	Status   string    `json:"status"`
	Created  time.Time `json:"created"`
}

// paymentsAPI is an example payments API. Payments live in memory: it
// shows the middleware, it is not a ledger.
type paymentsAPI struct {
	delay time.Duration // how long a charge takes

	mu   sync.Mutex // protects byID
	byID map[string]payment
}

func newPaymentsAPI() *paymentsAPI {
	return &paymentsAPI{byID: map[string]payment{}}
}

// charges returns the number of payments made.
func (a *paymentsAPI) charges() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byID)
}

func (a *paymentsAPI) create(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Amount   int64  `json:"amount"`
		Currency string `json:"currency"`
	}
	d := json.NewDecoder(r.Body)
	d.DisallowUnknownFields()
	if err := d.Decode(&req); err != nil {
		apiProblem(w, http.StatusBadRequest, "invalid payment", "the body must be a JSON object {\"amount\": cents, \"currency\": \"USD\"}: "+err.Error())
		return
	}
	if req.Amount <= 0 {
		apiProblem(w, http.StatusBadRequest, "invalid payment", fmt.Sprintf("amount %d is not positive", req.Amount))
		return
	}
	if len(req.Currency) != 3 || strings.ToUpper(req.Currency) != req.Currency {
		apiProblem(w, http.StatusBadRequest, "invalid payment", fmt.Sprintf("currency %q is not a three-letter upper-case code", req.Currency))
		return
	}
	select {
	case <-time.After(a.delay): // the card network
	case <-r.Context().Done():
		apiProblem(w, http.StatusServiceUnavailable, "payment interrupted", "the request was canceled before the charge")
		return
	}
	a.mu.Lock()
	p := payment{ID: fmt.Sprintf("pay_%06d", len(a.byID)+1), Amount: req.Amount, Currency: req.Currency, Status: "succeeded", Created: time.Now().UTC()}
	a.byID[p.ID] = p
	a.mu.Unlock()
	w.Header().Set("Location", "/payments/"+p.ID)
	writeJSON(w, http.StatusCreated, p)
}

func (a *paymentsAPI) get(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	p, ok := a.byID[r.PathValue("id")]
	a.mu.Unlock()
	if !ok {
		apiProblem(w, http.StatusNotFound, "no such payment", fmt.Sprintf("no payment has id %q", r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func apiProblem(w http.ResponseWriter, status int, title, detail string) {
	b, _ := json.Marshal(map[string]any{"type": "about:blank", "title": title, "status": status, "detail": detail})
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	w.Write(b)
}

// logRequests logs one line per request.
func logRequests(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		log.Info("request", "method", r.Method, "path", r.URL.Path, "status", sw.status,
			"replayed", w.Header().Get("Idempotent-Replayed") == "true", "duration", time.Since(start).String())
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
