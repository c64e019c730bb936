// Package idemadmin serves a running store to the people who operate it:
// one record, a filtered list, a census with the store's counters, and,
// when enabled, the same fenced repairs as the idem command (release, fail,
// delete).
//
// A store on Badger belongs to one process, so while a service runs, the
// idem command cannot open its data directory; mount this handler in the
// service, on a listen address of its own that only operators reach, and
// point the command at it (idem get -admin ADDR KEY, idem list -admin ADDR,
// idem stats -admin ADDR, idem release -admin ADDR KEY):
//
//	go http.ListenAndServe("127.0.0.1:9090", idemadmin.Handler(store, nil))
//
// The endpoints, all answering JSON:
//
//	GET  /admin/records/{key}  one record (Record), 404 when absent
//	GET  /admin/records        records, one Record per line, filtered by the
//	                           query: prefix, state, stale=true,
//	                           older-than=10m, limit (default 100, 0: all)
//	GET  /admin/stats          the census (Stats) with the store's counters
//	POST /admin/release/{key}  repairs, with Options.Repairs only: the body is
//	POST /admin/fail/{key}     a RepairRequest naming the token (and for
//	POST /admin/delete/{key}   delete the state) the operator was shown; a
//	                           record that changed meanwhile gets 409 and
//	                           nothing changes
//
// Repairs are off by default: whoever can reach them can make a request run
// twice. Each one is logged by the store (key, operation, token; never the
// response). The record and list endpoints show responses, which may hold
// personal data: the handler has no authentication of its own, so keep its
// address private or wrap it in the service's own.
package idemadmin

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

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
}

// RepairRequest is the body of a repair: the fencing token and state of
// the record the operator was shown (the repair applies only while the
// stored record still carries both), and for fail the response to replay
// and whether the next retry may run the request again instead. Delete
// needs the state: a holder that completes keeps its token, and deleting
// the completed record would make the next retry run the request again.
// To delete a record that cannot be decoded, send Corrupt and no token.
type RepairRequest struct {
	Token     uint64 `json:"token"`
	State     string `json:"state,omitempty"`
	Response  []byte `json:"response,omitempty"`
	Retryable bool   `json:"retryable,omitempty"`
	Corrupt   bool   `json:"corrupt,omitempty"`
}

// Problem is the body of every answer that is not a success: Error says
// what went wrong.
type Problem struct {
	Error string `json:"error"`
}

// maxRepairBody bounds a repair's body: a failure's response is at most
// the store's MaxResponseSize, which is 1 MiB by default; base64 adds a
// third.
const maxRepairBody = 64 << 20

// Handler returns the admin endpoints of s; see the package documentation.
// Nil options mean the zero Options.
func Handler(s *idem.Store, opts *Options) http.Handler {
	a := &admin{s: s}
	if opts != nil {
		a.opts = *opts
	}
	if a.opts.Logger == nil {
		a.opts.Logger = slog.New(slog.DiscardHandler)
	}
	if a.opts.Now == nil {
		a.opts.Now = s.Options().Now
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/records/{key...}", a.get)
	mux.HandleFunc("GET /admin/records", a.list)
	mux.HandleFunc("GET /admin/stats", a.stats)
	mux.HandleFunc("POST /admin/release/{key...}", a.repair("release"))
	mux.HandleFunc("POST /admin/fail/{key...}", a.repair("fail"))
	mux.HandleFunc("POST /admin/delete/{key...}", a.repair("delete"))
	return mux
}

type admin struct {
	s    *idem.Store
	opts Options
}

func (a *admin) get(w http.ResponseWriter, r *http.Request) {
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

func (a *admin) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := Filter{Prefix: q.Get("prefix"), State: q.Get("state")}
	limit := 100
	var err error
	if v := q.Get("stale"); v != "" {
		if f.Stale, err = strconv.ParseBool(v); err != nil {
			a.problem(w, r, http.StatusBadRequest, fmt.Sprintf("stale=%q: want true or false", v))
			return
		}
	}
	if v := q.Get("older-than"); v != "" {
		if f.OlderThan, err = time.ParseDuration(v); err != nil {
			a.problem(w, r, http.StatusBadRequest, fmt.Sprintf("older-than=%q: want a duration such as 10m", v))
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 0 {
			a.problem(w, r, http.StatusBadRequest, fmt.Sprintf("limit=%q: want a count, 0 for no limit", v))
			return
		}
	}
	if err := f.Check(); err != nil {
		a.problem(w, r, http.StatusBadRequest, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	n := 0
	errLimit := errors.New("limit reached")
	err = List(r.Context(), a.s, f, a.opts.Now(), func(_ *idem.Record, j Record) error {
		if limit > 0 && n >= limit {
			return errLimit
		}
		n++
		return enc.Encode(j)
	})
	switch {
	case errors.Is(err, errLimit):
		// The client learns of the cut from the count it asked for.
	case err != nil && n == 0:
		a.fail(w, r, err)
	case err != nil:
		// Lines were sent already: end the stream with the error.
		_ = enc.Encode(Problem{Error: err.Error()})
	}
}

func (a *admin) stats(w http.ResponseWriter, r *http.Request) {
	st, err := TakeStats(r.Context(), a.s, r.URL.Query().Get("prefix"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	c := a.s.Stats()
	st.Counters = &c
	writeJSON(w, http.StatusOK, st)
}

func (a *admin) repair(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.opts.Repairs {
			a.problem(w, r, http.StatusForbidden, "repairs are off on this endpoint (idemadmin.Options.Repairs; idem serve -admin-repairs)")
			return
		}
		key := r.PathValue("key")
		var req RepairRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRepairBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			a.problem(w, r, http.StatusBadRequest, "repair body: "+err.Error()+` (want {"token": N})`)
			return
		}
		ctx := r.Context()
		rec, err := a.s.Get(ctx, key)
		switch {
		case errors.Is(err, idem.ErrCorrupt) && op == "delete" && req.Corrupt:
			err = a.s.ForceDelete(ctx, key, nil)
		case errors.Is(err, idem.ErrCorrupt):
			a.problem(w, r, http.StatusConflict, fmt.Sprintf("%v; only delete with \"corrupt\": true removes it", err))
			return
		case err != nil:
			a.fail(w, r, err)
			return
		case req.Corrupt:
			a.problem(w, r, http.StatusConflict, fmt.Sprintf("%q is %s, not corrupt: it changed since it was shown; nothing changed", key, rec.State))
			return
		case req.Token == 0:
			a.problem(w, r, http.StatusBadRequest, "repair body: no token (send the token of the record you were shown)")
			return
		case op == "delete" && req.State == "":
			a.problem(w, r, http.StatusBadRequest, `repair body: no state (a delete sends the state of the record you were shown, e.g. "state": "in-progress")`)
			return
		case rec.Token != req.Token:
			a.problem(w, r, http.StatusConflict, fmt.Sprintf("%q carries token %d, not %d: it changed since it was shown; nothing changed", key, rec.Token, req.Token))
			return
		case req.State != "" && rec.State.String() != req.State:
			a.problem(w, r, http.StatusConflict, fmt.Sprintf("%q is %s, not %s: it changed since it was shown; nothing changed", key, rec.State, req.State))
			return
		case op != "delete" && rec.State != idem.StateInProgress:
			a.problem(w, r, http.StatusConflict, fmt.Sprintf("%q is %s, not in progress: nothing to %s (delete removes a record whatever its state)", key, rec.State, op))
			return
		case op == "release":
			err = a.s.ForceRelease(ctx, key, req.Token)
		case op == "fail":
			err = a.s.ForceFail(ctx, key, req.Token, req.Response, req.Retryable)
		default:
			err = a.s.ForceDelete(ctx, key, rec)
		}
		if errors.Is(err, idem.ErrLeaseLost) {
			a.problem(w, r, http.StatusConflict, fmt.Sprintf("refused, %q changed since it was shown; nothing changed: %v", key, err))
			return
		}
		if err != nil {
			a.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"done": op, "key": key})
	}
}

// fail answers a store error with the status it calls for.
func (a *admin) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, idem.ErrNotFound):
		a.problem(w, r, http.StatusNotFound, err.Error())
	case errors.Is(err, idem.ErrInvalidKey), errors.Is(err, idem.ErrTooLarge):
		a.problem(w, r, http.StatusBadRequest, err.Error())
	case r.Context().Err() != nil:
		// The client has gone.
	default:
		a.opts.Logger.Error("idemadmin: store error", "path", r.URL.Path, "err", err)
		a.problem(w, r, http.StatusInternalServerError, err.Error())
	}
}

func (a *admin) problem(w http.ResponseWriter, r *http.Request, code int, msg string) {
	if code >= 400 && code != http.StatusNotFound {
		a.opts.Logger.Warn("idemadmin: refused", "method", r.Method, "path", r.URL.Path, "status", code, "reason", msg)
	}
	writeJSON(w, code, Problem{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
