package idemhttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/idemdb/idem/internal/endctx"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/idemdb/idem"
)

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
	if errors.Is(err, idem.ErrInProgress) && rec != nil && m.cfg.WaitFor > 0 {
		lease, rec, err = m.wait(ctx, skey, fp, rec)
	}
	switch {
	case errors.Is(err, idem.ErrInProgress) && rec != nil:
		m.inProgress(w, key, rec)
		return
	case errors.Is(err, idem.ErrFingerprintMismatch):
		m.problem(w, ProblemKeyReused, http.StatusUnprocessableEntity, key,
			fmt.Sprintf("this key was first used with another request; %s %s with this body is a different request, so send it with a new key", r.Method, route))
		return
	case err != nil && r.Context().Err() != nil:
		return // the client has gone away
	case err != nil:
		m.cfg.Logger.Error("idemhttp: store unavailable", "key", skey, "err", err)
		p := m.cfg.problemResponse(ProblemStoreUnavailable, http.StatusServiceUnavailable, key,
			"the idempotency store could not be reached, so the request was not run; retry with the same key")
		p.header.Set("Retry-After", "1")
		m.write(w, p, false, time.Time{})
		return
	case lease == nil:
		m.replay(w, key, rec)
		return
	}

	r.Body = io.NopCloser(bytes.NewReader(body))
	m.run(ctx, w, r, next, key, fp, lease)
}

// wait waits, up to Options.WaitFor, for the request running under skey
// to end, and then asks Begin again: the outcome is then a replay, or a
// lease when the first request left the key retryable or its holder died.
// When the wait ends first, or too many requests already wait, the answer
// is ErrInProgress with the running record, as without the option.
func (m *middleware) wait(ctx context.Context, skey string, fp []byte, running *idem.Record) (*idem.Lease, *idem.Record, error) {
	wctx, cancel := context.WithTimeout(ctx, m.cfg.WaitFor)
	defer cancel()
	_, err := m.s.Wait(wctx, skey)
	if err != nil && !errors.Is(err, idem.ErrNotFound) {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, running, fmt.Errorf("idemhttp: wait: %w", idem.ErrInProgress)
	}
	return m.s.Begin(ctx, skey, fp)
}

// inProgress answers 409 for key, whose record rec is still running, with
// a Retry-After.
func (m *middleware) inProgress(w http.ResponseWriter, key string, rec *idem.Record) {
	retryAfter := m.cfg.RetryAfter
	if retryAfter == nil {
		retryAfter = DefaultRetryAfter
	}
	wait := max(int(math.Ceil(retryAfter(rec, m.now()).Seconds())), 1)
	p := m.cfg.problemResponse(ProblemInProgress, http.StatusConflict, key,
		fmt.Sprintf("a request with this key is still running; retry after %s", seconds(wait)))
	p.header.Set("Retry-After", strconv.Itoa(wait))
	m.write(w, p, false, time.Time{})
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
		m.write(w, m.notStored(key, "the response was not recorded"), true, rec.ExpiresAt)
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

func (m *middleware) notStored(key, why string) *response {
	return m.cfg.problemResponse(ProblemNotStored, http.StatusUnprocessableEntity, key,
		"the request with this key ran, but its response could not be stored ("+why+"), so it cannot be replayed; it is not run again: check the outcome another way")
}

// run runs the handler under lease and ends the lease by the outcome.
//
// The handler writes to a capture, which keeps the response in memory, so
// the client gets it only after the outcome is stored. When storing it is
// refused because the lease was lost (the lease lapsed and a newer request
// took the key over, or the key was deleted), the handler's response is
// not sent: the key's outcome is now the newer holder's, and the client
// gets that instead (see answerLost). A response the handler streamed
// (Flush), hijacked or made larger than the store's MaxResponseSize has
// reached the client already and cannot be taken back.
func (m *middleware) run(ctx context.Context, w http.ResponseWriter, r *http.Request, next http.Handler, key string, fp []byte, lease *idem.Lease) {
	// Ending the lease outlives the client's connection.
	endCtx, endCancel := endctx.New(ctx)
	defer endCancel()

	// Renewal outlives the client's connection too (Lease.Run): a handler
	// past its side effect may finish after the client has gone, and a
	// lapsed lease would let the client's retry run it again. A panic
	// leaves the key to the client's retry.
	c := newCapture(w, m.maxResp)
	lease.Run(ctx, func(ctx context.Context) { next.ServeHTTP(c, r.WithContext(ctx)) })

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
			var expires time.Time
			switch {
			case errors.Is(err, idem.ErrLeaseLost):
				m.cfg.Logger.Warn("idemhttp: the key was taken over while the handler ran, so its response was refused and is not sent; the client gets the key's stored outcome instead",
					"key", lease.Key(), "status", resp.status, "err", err)
				m.answerLost(endCtx, w, key, lease.Key(), fp)
				return
			case err != nil:
				m.logEndFailed(lease, fmt.Sprintf("with status %d", resp.status), err)
			case outcome != Retry:
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
		err = lease.Fail(endCtx, encodeResponse(m.notStored(key, c.unstored)), false)
	}
	if err != nil {
		m.logEndFailed(lease, "of an unstored response ("+c.unstored+"), which the client has already received,", err)
	}
}

// logEndFailed logs that ending lease (the what of it) failed with err,
// and what that means for the next request with the key.
func (m *middleware) logEndFailed(lease *idem.Lease, what string, err error) {
	msg := "idemhttp: ending the key " + what + " failed"
	if errors.Is(err, idem.ErrLeaseLost) {
		// Fencing refused the write: the key is another request's now.
		m.cfg.Logger.Warn(msg+"; the key had been taken over by a newer request (or deleted), whose outcome stands", "key", lease.Key(), "err", err)
		return
	}
	// Unless the write reached the store after all (a timeout can hide
	// that), the record stays in progress until the lease lapses, and the
	// first retry after that takes the key over and runs the request again.
	m.cfg.Logger.Error(msg+"; unless the write reached the store, the key stays in progress until its lease lapses, and a retry after that runs the request again",
		"key", lease.Key(), "lease_until", lease.Until(), "err", err)
}

// answerLost answers a request whose handler ran but whose lease was lost
// before its outcome was stored: never with the handler's response, which
// the store refused, but with what the key holds now (skey is its stored
// key, fp the request's fingerprint). A finished outcome that a retry
// would be given (completed, or failed and not retryable) is replayed;
// a newer request still running gets 409 with Retry-After, as a duplicate
// would. Otherwise (the key was deleted or released, the newer request
// failed and may be retried, the key now holds another request, or the
// store cannot be read) the client gets 409 ProblemLeaseLost with
// Retry-After: a retry with the same key is answered from the store, or
// runs the request again.
func (m *middleware) answerLost(ctx context.Context, w http.ResponseWriter, key, skey string, fp []byte) {
	rec, err := m.s.Get(ctx, skey)
	var why string
	switch {
	case errors.Is(err, idem.ErrNotFound):
		why = "the key was deleted or released since, so a retry with it runs the request again"
	case err != nil:
		m.cfg.Logger.Error("idemhttp: reading the outcome of a taken-over key", "key", skey, "err", err)
		why = "the key's current outcome could not be read; a retry with it gets that outcome, or runs the request again"
	case !bytes.Equal(rec.Fingerprint, fp):
		why = "the key now belongs to another request"
	case rec.State == idem.StateInProgress:
		m.inProgress(w, key, rec)
		return
	case rec.State == idem.StateFailed && rec.Retryable:
		why = "a newer run of it failed in a way that may be retried, so a retry with the key runs the request again"
	default:
		m.replay(w, key, rec)
		return
	}
	p := m.cfg.problemResponse(ProblemLeaseLost, http.StatusConflict, key,
		"the request ran, but another request with this key took it over before its outcome was stored, so its response is not sent; "+why)
	p.header.Set("Retry-After", "1")
	m.write(w, p, false, time.Time{})
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
	m.write(w, m.cfg.problemResponse(typ, status, key, detail), false, time.Time{})
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
