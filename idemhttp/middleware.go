package idemhttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/idemdb/idem"
)

// endTimeout bounds storing a request's outcome, which goes on after the
// client has gone away: the handler ran, and its outcome must be recorded.
const endTimeout = 30 * time.Second

// New returns middleware that makes the handlers it wraps idempotent with
// the Idempotency-Key header, storing outcomes in s. Passing nil options
// uses the defaults. New panics when the options are inconsistent, so that
// misconfiguration shows at start-up rather than on a request.
func New(s *idem.Store, opts *Options) func(http.Handler) http.Handler {
	if s == nil {
		panic("idemhttp: New with a nil store")
	}
	c := opts.config()
	so := s.Options()
	if so.MaxKeySize < minStoreKeySize {
		panic(fmt.Sprintf("idemhttp: the store's MaxKeySize %d is below the %d bytes the middleware needs", so.MaxKeySize, minStoreKeySize))
	}
	lease := c.LeaseTTL
	if lease == 0 {
		lease = so.LeaseTTL
	}
	m := &middleware{cfg: c, s: s, lease: lease, now: so.Now, maxKey: so.MaxKeySize, maxResp: so.MaxResponseSize}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			m.serve(w, r, next)
		})
	}
}

type middleware struct {
	cfg     config
	s       *idem.Store
	lease   time.Duration
	now     func() time.Time // the store's clock
	maxKey  int
	maxResp int
}

func (m *middleware) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if !m.cfg.methods[r.Method] {
		next.ServeHTTP(w, r)
		return
	}
	values := r.Header.Values(m.cfg.Header)
	switch {
	case len(values) == 0:
		if m.cfg.Required != nil && m.cfg.Required(r) {
			m.problem(w, ProblemKeyRequired, http.StatusBadRequest, "",
				fmt.Sprintf("%s %s requires an %s header", r.Method, r.URL.Path, m.cfg.Header))
			return
		}
		next.ServeHTTP(w, r)
		return
	case len(values) > 1:
		m.problem(w, ProblemInvalidKey, http.StatusBadRequest, "",
			fmt.Sprintf("%d %s headers; send exactly one", len(values), m.cfg.Header))
		return
	}
	key, err := ParseKey(values[0])
	if err != nil {
		m.problem(w, ProblemInvalidKey, http.StatusBadRequest, "", fmt.Sprintf("%s header: %v", m.cfg.Header, err))
		return
	}

	body, err := m.readBody(r)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			m.problem(w, ProblemBodyTooLarge, http.StatusRequestEntityTooLarge, key,
				fmt.Sprintf("the request body is larger than %d bytes", m.cfg.MaxBodyBytes))
			return
		}
		m.problem(w, ProblemBodyUnreadable, http.StatusBadRequest, key, fmt.Sprintf("reading the request body: %v; the request was not run", err))
		return
	}
	route := m.route(r)
	fp := Fingerprint(r.Method, route, body, m.cfg.CanonicalJSON)
	scope := ""
	if m.cfg.Scope != nil {
		scope = m.cfg.Scope(r)
	}
	skey := storedKey(scope, key, m.maxKey)

	ctx := idem.WithLeaseTTL(r.Context(), m.lease)
	if m.cfg.TTL != nil {
		ctx = idem.WithTTL(ctx, m.cfg.TTL(r))
	}
	lease, rec, err := m.s.Begin(ctx, skey, fp)
	switch {
	case errors.Is(err, idem.ErrInProgress) && rec != nil:
		retryAfter := m.cfg.RetryAfter
		if retryAfter == nil {
			retryAfter = DefaultRetryAfter
		}
		wait := max(int(math.Ceil(retryAfter(rec, m.now()).Seconds())), 1)
		p := problemResponse(ProblemInProgress, http.StatusConflict, key,
			fmt.Sprintf("a request with this key is still running; retry after %s", seconds(wait)))
		p.header.Set("Retry-After", strconv.Itoa(wait))
		m.write(w, p, false, time.Time{})
		return
	case errors.Is(err, idem.ErrFingerprintMismatch):
		m.problem(w, ProblemKeyReused, http.StatusUnprocessableEntity, key,
			fmt.Sprintf("this key was first used with another request; %s %s with this body is a different request, so send it with a new key", r.Method, route))
		return
	case err != nil && r.Context().Err() != nil:
		return // the client has gone away
	case err != nil:
		m.cfg.Logger.Error("idemhttp: store unavailable", "key", skey, "err", err)
		p := problemResponse(ProblemStoreUnavailable, http.StatusServiceUnavailable, key,
			"the idempotency store could not be reached, so the request was not run; retry with the same key")
		p.header.Set("Retry-After", "1")
		m.write(w, p, false, time.Time{})
		return
	case lease == nil:
		m.replay(w, key, rec)
		return
	}

	r.Body = io.NopCloser(bytes.NewReader(body))
	m.run(ctx, w, r, next, key, lease)
}

// readBody reads the whole request body, at most MaxBodyBytes of it.
func (m *middleware) readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	defer r.Body.Close()
	if r.ContentLength > m.cfg.MaxBodyBytes {
		return nil, &http.MaxBytesError{Limit: m.cfg.MaxBodyBytes}
	}
	return io.ReadAll(http.MaxBytesReader(nil, r.Body, m.cfg.MaxBodyBytes))
}

func (m *middleware) route(r *http.Request) string {
	if m.cfg.Route != nil {
		return m.cfg.Route(r)
	}
	// The escaped path: /a%2Fb and /a/b may be different resources.
	if r.URL.RawQuery == "" {
		return r.URL.EscapedPath()
	}
	return r.URL.EscapedPath() + "?" + r.URL.Query().Encode()
}

// replay writes the stored outcome rec.
func (m *middleware) replay(w http.ResponseWriter, key string, rec *idem.Record) {
	if rec.State == idem.StateFailed && len(rec.Response) == 0 {
		// Stored without a response by another writer of the store (Do
		// ends an oversized response this way).
		m.write(w, notStored(key, "the response was not recorded"), true, rec.ExpiresAt)
		return
	}
	resp, err := decodeResponse(rec.Response)
	if err != nil {
		m.cfg.Logger.Error("idemhttp: stored response is corrupt", "key", rec.Key, "err", err)
		m.problem(w, ProblemCorrupt, http.StatusInternalServerError, key,
			"the response stored for this key cannot be decoded, so it is not replayed and the request is not run again")
		return
	}
	m.write(w, resp, true, rec.ExpiresAt)
}

func notStored(key, why string) *response {
	return problemResponse(ProblemNotStored, http.StatusUnprocessableEntity, key,
		"the request with this key ran, but its response could not be stored ("+why+"), so it cannot be replayed; it is not run again: check the outcome another way")
}

// run runs the handler under lease and ends the lease by the outcome.
func (m *middleware) run(ctx context.Context, w http.ResponseWriter, r *http.Request, next http.Handler, key string, lease *idem.Lease) {
	// Renewal outlives the client's connection (Lease.KeepAlive): a
	// handler past its side effect may finish after the client has gone,
	// and a lapsed lease would let the client's retry run it again.
	runCtx, stopRenew := lease.KeepAlive(ctx)
	defer stopRenew()

	// Ending the lease outlives the client's connection.
	endCtx, endCancel := context.WithTimeout(context.WithoutCancel(ctx), endTimeout)
	defer endCancel()

	c := newCapture(w, m.maxResp)
	func() {
		defer func() {
			if p := recover(); p != nil {
				stopRenew()
				// The handler failed: leave the key to the client's retry.
				if err := lease.Fail(endCtx, nil, true); err != nil {
					m.cfg.Logger.Error("idemhttp: ending the key after a panic", "key", lease.Key(), "err", err)
				}
				panic(p)
			}
		}()
		next.ServeHTTP(c, r.WithContext(runCtx))
	}()
	stopRenew()

	var expires time.Time
	if c.unstored == "" {
		resp := c.response()
		data := encodeResponse(resp)
		// The client gets every header and trailer the handler set; the
		// store keeps only the headers that may be replayed.
		head, trailer := splitTrailers(c.final())
		sent := &response{status: resp.status, header: head, body: resp.body, trailer: trailer}
		if len(data) <= m.maxResp {
			var err error
			outcome := m.cfg.Policy(resp.status)
			switch outcome {
			case Completed:
				err = lease.Complete(endCtx, data)
			case Failed:
				err = lease.Fail(endCtx, data, false)
			default:
				err = lease.Fail(endCtx, data, true)
			}
			if err != nil {
				m.cfg.Logger.Error("idemhttp: storing the response failed; a retry will run the request again", "key", lease.Key(), "status", resp.status, "err", err)
			} else if outcome != Retry {
				expires = m.expiry(endCtx, r, lease.Key(), outcome)
			}
			m.write(w, sent, false, expires)
			return
		}
		c.unstored = "larger than the store's maximum response size"
		m.write(w, sent, false, time.Time{})
	}
	var err error
	if m.cfg.PassThroughUnstored {
		err = lease.Release(endCtx)
	} else {
		err = lease.Fail(endCtx, encodeResponse(notStored(key, c.unstored)), false)
	}
	if err != nil {
		m.cfg.Logger.Error("idemhttp: ending the key of an unstored response", "key", lease.Key(), "err", err)
	}
}

// expiry returns when the record just stored under key for r with outcome
// expires, or zero when no expiry header is wanted.
func (m *middleware) expiry(ctx context.Context, r *http.Request, key string, outcome Outcome) time.Time {
	if m.cfg.ExpiresHeader == "" {
		return time.Time{}
	}
	// The record's own expiry, which replays advertise: one computed from
	// the clock now can be a second later.
	if rec, err := m.s.Get(ctx, key); err == nil && rec.State != idem.StateInProgress {
		return rec.ExpiresAt
	}
	var d time.Duration
	if m.cfg.TTL != nil {
		d = m.cfg.TTL(r)
	}
	if d <= 0 {
		d = m.s.Options().CompletedTTL
		if outcome == Failed {
			d = m.s.Options().FailedTTL
		}
	}
	return m.now().Add(d)
}

func (m *middleware) problem(w http.ResponseWriter, typ string, status int, key, detail string) {
	m.write(w, problemResponse(typ, status, key, detail), false, time.Time{})
}

// write sends resp. Stored headers replace any of the same name set by
// outer handlers; a replay says so in Idempotent-Replayed.
func (m *middleware) write(w http.ResponseWriter, resp *response, replayed bool, expires time.Time) {
	h := w.Header()
	copyHeader(h, resp.header)
	// Trailers need a chunked body, which a Content-Length rules out.
	if h.Get("Content-Length") == "" && bodyAllowed(resp.status) && resp.trailer == nil {
		h.Set("Content-Length", strconv.Itoa(len(resp.body)))
	}
	if replayed {
		h.Set("Idempotent-Replayed", "true")
	}
	if m.cfg.ExpiresHeader != "" && !expires.IsZero() {
		h.Set(m.cfg.ExpiresHeader, expires.UTC().Format(http.TimeFormat))
	}
	w.WriteHeader(resp.status)
	if bodyAllowed(resp.status) {
		w.Write(resp.body)
	}
	copyHeader(h, resp.trailer)
}

func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

// seconds returns "1 second" or "n seconds".
func seconds(n int) string {
	if n == 1 {
		return "1 second"
	}
	return strconv.Itoa(n) + " seconds"
}
