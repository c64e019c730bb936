package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
	"github.com/idemdb/idem/idemprom"
	"github.com/idemdb/idem/internal/payments"
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
			fs.StringVar(&cfg.adminHosts, "admin-hosts", "", "also answer admin requests addressed to `NAMES` (comma-separated host names, \"*\" for any): "+
				"the names operators reach -admin by, besides loopback and its own address; others are refused, so that no web page can reach it through a rebound DNS name")
			fs.BoolVar(&cfg.repairs, "admin-repairs", false, "also serve the repairs (idem release, fail and delete with -admin) on the admin address: "+
				"whoever reaches them can make a request run twice")
			return func(args []string, _, stderr io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				if err := cfg.store.check(); err != nil {
					return err
				}
				if (cfg.repairs || cfg.adminHosts != "") && cfg.admin == "" {
					return usageErr("-admin-repairs and -admin-hosts need -admin ADDR")
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
	// adminHosts are more names the admin endpoint answers, comma-separated.
	adminHosts string
}

// Timeouts of every HTTP server idem serve runs (the payments API and
// the admin endpoint): a client has serveHeaderTimeout to send a
// request's headers and serveReadTimeout to send all of it, body
// included, so that a stalled client cannot hold a connection and a
// handler; a connection between requests is closed after
// serveIdleTimeout. Variables, so that tests can shorten them.
var (
	serveHeaderTimeout = 10 * time.Second
	serveReadTimeout   = 15 * time.Second
	serveIdleTimeout   = time.Minute
)

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
			ReadHeaderTimeout: serveHeaderTimeout,
			ReadTimeout:       serveReadTimeout,
			IdleTimeout:       serveIdleTimeout,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelError),
		}}, nil
	}
	pay := payments.NewAPI()
	api, err := newServer("api", cfg.addr, newServeHandler(s, pay, log))
	if err != nil {
		return err
	}
	servers := []server{api}
	if cfg.admin != "" {
		reg.MustRegister(idemprom.NewCollector(s, nil))
		admin, err := newServer("admin", cfg.admin, adminHandler(s, reg, &idemadmin.Options{
			Repairs:      cfg.repairs,
			Logger:       log,
			AllowedHosts: adminHosts(cfg.admin, cfg.adminHosts),
		}))
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
		servers = append(servers, server{"grpc", ln, newGRPCServer(s, pay, log)})
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

// newServeHandler returns the HTTP handler of `idem serve` and the demo:
// the example payments API (internal/payments) behind the idempotency
// middleware on s, with request logging.
func newServeHandler(s *idem.Store, api *payments.API, log *slog.Logger) http.Handler {
	return logRequests(log, payments.Handler(s, api, log))
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
