// Package idemadmin is the admin protocol of a running store, both sides:
// Handler serves one record, a filtered list, a census with the store's
// counters and, when enabled, the same fenced repairs as the idem command
// (release, fail, delete); Client calls them.
//
// A store on Badger belongs to one process, so while a service runs, the
// idem command cannot open its data directory; mount this handler in the
// service, on a listen address of its own that only operators reach, and
// point the command at it (idem get -admin ADDR KEY, idem list -admin ADDR,
// idem stats -admin ADDR, idem release -admin ADDR KEY):
//
//	go http.ListenAndServe("127.0.0.1:9090", idemadmin.Handler(store, nil))
//
// The endpoints, all answering JSON with snake_case keys:
//
//	GET  /admin/records/{key}  one record (Record), 404 when absent
//	GET  /admin/records        a page of records, one Record per line,
//	                           filtered by the query (Filter.Encode):
//	                           prefix, state, stale=true, older-than=10m,
//	                           limit (default 100, at most MaxLimit) and
//	                           after; a page that stops before the end of
//	                           the list ends with a ListEnd line whose next
//	                           is the after of the next page
//	GET  /admin/stats          the census (Stats) with the store's counters
//	POST /admin/release/{key}  repairs, with Options.Repairs only: the body is
//	POST /admin/fail/{key}     a RepairRequest naming the token (and for
//	POST /admin/delete/{key}   delete the state) the operator was shown; a
//	                           record that changed meanwhile gets 409, a
//	                           Problem with the stored record, and nothing
//	                           changes
//
// Repairs are off by default: whoever can reach them can make a request run
// twice. Each one is logged by the store (key, operation, token; never the
// response). The record and list endpoints show responses, which may hold
// personal data: the handler has no authentication of its own, so keep its
// address private or wrap it in the service's own.
//
// What the handler does itself against a web page in an operator's
// browser: it answers only requests whose Host names a loopback address
// or one of Options.AllowedHosts (421 otherwise), so that a name an
// attacker rebinds to the admin address (DNS rebinding) reaches nothing;
// it refuses any request a browser marks as coming from another site
// (Sec-Fetch-Site, or an Origin other than the Host: 403); and a repair's
// body must be sent as application/json (415 otherwise), which a form on
// another site cannot send. Each list page and stats census is bounded
// (MaxLimit, Options.CensusLimit), a census is shared by the stats calls
// of a few seconds (Options.StatsMaxAge), and the scans run one at a time
// (Options.Scans), so that operators' tools in a loop cannot stall the
// service.
package idemadmin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/idemdb/idem"
)

// Options configure Handler. The zero value serves the read-only endpoints.
type Options struct {
	// Repairs enables the repair endpoints (release, fail, delete).
	Repairs bool
	// Logger receives a line per refused or failed request. Nil means
	// silent, as everywhere in idem. Repairs themselves are logged by the
	// store.
	Logger *slog.Logger
	// Now is the clock that decides which leases are stale and how old a
	// record is. Nil means the store's clock (idem.Options.Now).
	Now func() time.Time
	// AllowedHosts are the host names and addresses, besides loopback
	// ones (localhost, 127.0.0.1, ::1), that a request's Host may name,
	// with or without a port: the names operators reach the handler by,
	// such as the address it listens on. A request for any other host is
	// refused with 421, so that a name rebound to this address by an
	// attacker's DNS reaches nothing. "*" allows every host (behind a
	// proxy that checks it). Nil means loopback only.
	AllowedHosts []string
	// CensusLimit caps the records one stats census reads; a store with
	// more gets counts marked truncated (lower bounds). Zero means
	// DefaultCensusLimit; negative means no limit.
	CensusLimit int
	// StatsMaxAge is how long a stats census is served again before a
	// new one is taken; the counters are always current. Zero means 5
	// seconds; negative means a census for every call (calls at the same
	// time still share one).
	StatsMaxAge time.Duration
	// Scans is how many list pages and stats censuses run at once; the
	// others wait their turn. Zero means 1.
	Scans int
}

// DefaultCensusLimit is the default of Options.CensusLimit: the same as
// idemprom's census.
const DefaultCensusLimit = 100_000

// Bounds of the scans: a request waits turnTimeout at most for its turn
// to scan (then 503); a census is taken for every stats caller waiting
// for it, so it is not tied to the first caller's request, and gets
// censusTimeout; a list page stops writing to a client that stops
// reading after pageTimeout.
const (
	turnTimeout   = 30 * time.Second
	censusTimeout = 30 * time.Second
	pageTimeout   = 30 * time.Second
)

// pageBytes is how much a list page writes before it ends with a
// ListEnd: a page of MaxLimit records of large responses would be
// gigabytes.
var pageBytes = 32 << 20

// errBusy is returned when a request's turn to scan did not come within
// turnTimeout.
var errBusy = errors.New("other list pages or censuses of the store are running: try again shortly (idemadmin.Options.Scans)")

// RepairRequest is the body of a repair: what the operator was shown of
// the record, for the store to fence the repair on (idem.Record.Same),
// and for fail the response to replay and whether the next retry may run
// the request again instead. Every repair names the fencing token. Delete
// names the state too: a holder that completes keeps its token, and
// deleting the completed record would make the next retry run the request
// again; release and fail apply to in-progress records only. A delete may
// send CreatedAt too, which tells the record apart from a later one under
// the same key. To delete a record that cannot be decoded, send Corrupt
// and no token.
type RepairRequest struct {
	Token     uint64     `json:"token"`
	State     string     `json:"state,omitempty"`
	CreatedAt *time.Time `json:"created_at,omitempty"`
	Response  []byte     `json:"response,omitempty"`
	Retryable bool       `json:"retryable,omitempty"`
	Corrupt   bool       `json:"corrupt,omitempty"`
}

// Problem is the body of every answer that is not a success: Error says
// what went wrong. A repair refused because the record is not the one
// shown answers 409 with the store's *idem.ChangedError: its message,
// Stored, the record stored now, and Want, what the request said was
// stored.
type Problem struct {
	Error  string  `json:"error"`
	Stored *Record `json:"stored,omitempty"`
	Want   string  `json:"want,omitempty"`
}

// maxRepairBody bounds a repair's body: a failure's response is at most
// the store's MaxResponseSize, which is 1 MiB by default; base64 adds a
// third.
const maxRepairBody = 64 << 20

// Handler returns the admin endpoints of s; see the package documentation.
// Nil options mean the zero Options.
func Handler(s *idem.Store, opts *Options) http.Handler {
	a := &server{s: s}
	if opts != nil {
		a.opts = *opts
		a.opts.AllowedHosts = append([]string(nil), opts.AllowedHosts...)
	}
	if a.opts.Logger == nil {
		a.opts.Logger = slog.New(slog.DiscardHandler)
	}
	if a.opts.Now == nil {
		a.opts.Now = s.Options().Now
	}
	switch {
	case a.opts.CensusLimit == 0:
		a.opts.CensusLimit = DefaultCensusLimit
	case a.opts.CensusLimit < 0:
		a.opts.CensusLimit = 0
	}
	if a.opts.StatsMaxAge == 0 {
		a.opts.StatsMaxAge = 5 * time.Second
	}
	if a.opts.Scans <= 0 {
		a.opts.Scans = 1
	}
	a.hosts = newHostCheck(a.opts.AllowedHosts)
	a.scans = make(chan struct{}, a.opts.Scans)
	a.census = &statsCache{maxAge: a.opts.StatsMaxAge, now: time.Now, take: func(ctx context.Context, prefix string) (Stats, error) {
		if err := a.acquire(context.WithoutCancel(ctx)); err != nil {
			return Stats{}, err
		}
		defer a.release()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), censusTimeout)
		defer cancel()
		return takeStats(ctx, s, prefix, a.opts.CensusLimit)
	}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/records/{key...}", a.get)
	mux.HandleFunc("GET /admin/records", a.list)
	mux.HandleFunc("GET /admin/stats", a.stats)
	mux.HandleFunc("POST /admin/release/{key...}", a.repair("release"))
	mux.HandleFunc("POST /admin/fail/{key...}", a.repair("fail"))
	mux.HandleFunc("POST /admin/delete/{key...}", a.repair("delete"))
	return a.guard(mux)
}

type server struct {
	s      *idem.Store
	opts   Options
	hosts  hostCheck
	scans  chan struct{} // a token per list page or census running
	census *statsCache
}

// acquire waits for a turn to scan the store, until ctx ends or for
// turnTimeout at most (errBusy).
func (a *server) acquire(ctx context.Context) error {
	t := time.NewTimer(turnTimeout)
	defer t.Stop()
	select {
	case a.scans <- struct{}{}:
		return nil
	case <-t.C:
		return errBusy
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *server) release() { <-a.scans }

func (a *server) get(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	rec, err := a.s.Get(r.Context(), key)
	switch {
	case errors.Is(err, idem.ErrCorrupt):
		writeJSON(w, http.StatusOK, CorruptRecord(key, err))
	case err != nil:
		a.fail(w, r, err)
	default:
		writeJSON(w, http.StatusOK, FromRecord(rec))
	}
}

func (a *server) list(w http.ResponseWriter, r *http.Request) {
	f, err := ParseFilter(r.URL.Query())
	if err == nil && (f.Limit < 1 || f.Limit > MaxLimit) {
		err = fmt.Errorf("limit=%d: a page holds 1 to %d records; the last line of a page that stops early names the after= of the next", f.Limit, MaxLimit)
	}
	if err != nil {
		a.problem(w, r, http.StatusBadRequest, Problem{Error: err.Error()})
		return
	}
	ctx := r.Context()
	if err := a.acquire(ctx); err != nil {
		a.fail(w, r, err)
		return
	}
	defer a.release()
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(pageTimeout))
	w.Header().Set("Content-Type", "application/x-ndjson")
	cw := &countingWriter{w: w}
	enc := json.NewEncoder(cw)
	n := 0
	end, err := list(ctx, a.s, f, a.opts.Now(), pageScan, func() bool { return cw.n >= pageBytes }, func(_ *idem.Record, j Record) error {
		n++
		return enc.Encode(j)
	})
	switch {
	case errors.Is(err, ErrNoKeyOrder) && n == 0:
		a.problem(w, r, http.StatusBadRequest, Problem{Error: err.Error()})
	case err != nil && n == 0:
		a.fail(w, r, err)
	case err != nil:
		// Lines were sent already: end the stream with the error.
		_ = enc.Encode(Problem{Error: err.Error()})
	case end != nil:
		_ = enc.Encode(end)
	}
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += n
	return n, err
}

func (a *server) stats(w http.ResponseWriter, r *http.Request) {
	st, err := a.census.get(r.Context(), r.URL.Query().Get("prefix"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	c := a.s.Stats()
	st.Counters = &c
	writeJSON(w, http.StatusOK, st)
}

func (a *server) repair(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.opts.Repairs {
			a.problem(w, r, http.StatusForbidden, Problem{Error: "repairs are off on this endpoint (idemadmin.Options.Repairs; idem serve -admin-repairs)"})
			return
		}
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
			a.problem(w, r, http.StatusUnsupportedMediaType, Problem{Error: fmt.Sprintf("a repair's body is a RepairRequest sent as Content-Type: application/json, not %q", r.Header.Get("Content-Type"))})
			return
		}
		key := r.PathValue("key")
		var req RepairRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRepairBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			a.problem(w, r, http.StatusBadRequest, Problem{Error: "repair body: " + err.Error() + ` (want {"token": N})`})
			return
		}
		shown, err := req.shown(op)
		if err != nil {
			a.problem(w, r, http.StatusBadRequest, Problem{Error: "repair body: " + err.Error()})
			return
		}
		ctx := r.Context()
		switch op {
		case "release":
			err = a.s.ForceRelease(ctx, key, req.Token)
		case "fail":
			err = a.s.ForceFail(ctx, key, req.Token, req.Response, req.Retryable)
		default:
			err = a.s.ForceDelete(ctx, key, shown)
		}
		var changed *idem.ChangedError
		switch {
		case errors.As(err, &changed):
			p := Problem{Error: err.Error(), Want: changed.Want}
			if changed.Stored != nil {
				j := FromRecord(changed.Stored)
				p.Stored = &j
			}
			a.problem(w, r, http.StatusConflict, p)
		case errors.Is(err, idem.ErrCorrupt):
			a.problem(w, r, http.StatusConflict, Problem{Error: fmt.Sprintf("%v; only delete with \"corrupt\": true removes it", err)})
		case err != nil:
			a.fail(w, r, err)
		default:
			writeJSON(w, http.StatusOK, map[string]string{"done": op, "key": key})
		}
	}
}

// shown returns the record req says the operator was shown, for a repair
// op to be fenced on (nil: a corrupt record), or what is missing or
// contradictory in req. Whether the stored record is still that one is
// the store's to decide.
func (req *RepairRequest) shown(op string) (*idem.Record, error) {
	switch {
	case req.Corrupt && op != "delete":
		return nil, fmt.Errorf(`"corrupt": true goes with delete only: a record that cannot be read cannot be ended with %s`, op)
	case req.Corrupt:
		return nil, nil
	case req.Token == 0:
		return nil, errors.New("no token (send the token of the record you were shown)")
	case op == "delete" && req.State == "":
		return nil, errors.New(`no state (a delete sends the state of the record you were shown, e.g. "state": "in-progress")`)
	}
	rec := &idem.Record{State: idem.StateInProgress, Token: req.Token, CreatedAt: timeVal(req.CreatedAt)}
	if req.State != "" {
		st, err := idem.ParseState(req.State)
		if err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
		if op != "delete" && st != idem.StateInProgress {
			return nil, fmt.Errorf("%s ends an in-progress record, not a %s one (delete removes a record whatever its state)", op, st)
		}
		rec.State = st
	}
	return rec, nil
}

// fail answers a store error with the status it calls for.
func (a *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, idem.ErrNotFound):
		a.problem(w, r, http.StatusNotFound, Problem{Error: err.Error()})
	case errors.Is(err, idem.ErrInvalidKey), errors.Is(err, idem.ErrTooLarge):
		a.problem(w, r, http.StatusBadRequest, Problem{Error: err.Error()})
	case errors.Is(err, errBusy):
		w.Header().Set("Retry-After", "1")
		a.problem(w, r, http.StatusServiceUnavailable, Problem{Error: err.Error()})
	case r.Context().Err() != nil:
		// The client has gone.
	default:
		a.opts.Logger.Error("idemadmin: store error", "method", r.Method, "path", clip(r.URL.Path, maxLoggedKey), "err", clipIn(err.Error(), r.PathValue("key")))
		a.problem(w, r, http.StatusInternalServerError, Problem{Error: err.Error()})
	}
}

func (a *server) problem(w http.ResponseWriter, r *http.Request, code int, p Problem) {
	if code >= 400 && code != http.StatusNotFound && code != http.StatusInternalServerError {
		a.opts.Logger.Warn("idemadmin: refused", "method", r.Method, "path", clip(r.URL.Path, maxLoggedKey), "status", code, "reason", clipIn(p.Error, r.PathValue("key")))
	}
	writeJSON(w, code, p)
}

// Bounds of what the handler logs: a key may be tens of kilobytes long
// (idem.Options.MaxKeySize), and a path or a message holds it.
const (
	maxLoggedKey     = 200
	maxLoggedMessage = 1000
)

// clip returns s, or when it is longer than n bytes its first bytes
// with a marker saying how long it was.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s...(%d bytes)", s[:cut], len(s))
}

// clipIn returns msg, a message that may quote key, with key clipped, and
// the message clipped too should it still be long.
func clipIn(msg, key string) string {
	if len(key) > maxLoggedKey {
		msg = strings.ReplaceAll(msg, key, clip(key, maxLoggedKey))
	}
	return clip(msg, maxLoggedMessage)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
