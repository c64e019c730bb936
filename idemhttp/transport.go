package idemhttp

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Transport is an http.RoundTripper that makes POST and PATCH requests
// safe to retry. It sends each such request's idempotency key as a
// Structured Field string (`Idempotency-Key: "8e03978e-..."`), as the
// draft asks: the caller's key if the request has one (quoted or bare),
// otherwise a fresh one (a random UUID). It then retries, with the same
// key and body, what the server allows to be retried: network errors, 409
// (the key is still running), 429 and 5xx, unless the response is marked
// "Idempotent-Replayed: true" (the request's stored outcome, which a retry
// would only replay again). It waits as long as the response's
// Retry-After asks (seconds or an HTTP date), or, without one, a random
// duration below an exponentially growing ceiling (full jitter). It stops
// after MaxAttempts, when the request's context ends, or when a
// Retry-After asks for longer than MaxRetryAfter; the last response (or
// error) is returned. Other methods, and other statuses, pass through once.
//
// A retry sends the body again: from req.GetBody, which http.NewRequest
// sets for bytes, strings and bytes.Reader bodies, or else from a copy of
// up to MaxBufferedBody bytes read before the first attempt. A larger body
// without GetBody is sent once and not retried.
//
// RoundTrip returns an error, sending nothing, when the request's key is
// malformed (empty, only whitespace, over 255 bytes, not visible ASCII),
// when NewKey returns such a key, or when the request carries two
// different keys. A key set under another spelling of the header name
// (req.Header["idempotency-key"]) counts as the key, and exactly one
// header is sent.
//
// Use it against servers that make requests idempotent by key (New does):
// against one that ignores the key, a retry after a lost response runs the
// request twice.
//
// The zero value is usable. A Transport is safe for simultaneous use by
// multiple goroutines.
type Transport struct {
	// Base sends each attempt. Nil means http.DefaultTransport.
	Base http.RoundTripper
	// Header is the key's header. Empty means "Idempotency-Key".
	Header string
	// Methods are the methods given keys and retried. Nil means POST and
	// PATCH.
	Methods []string
	// MaxAttempts bounds the attempts per request, the first included.
	// Zero means 5.
	MaxAttempts int
	// MinBackoff is the backoff ceiling before the second attempt; it
	// doubles each attempt up to MaxBackoff, and the wait is a random
	// duration below the ceiling. Zero means 100ms.
	MinBackoff time.Duration
	// MaxBackoff caps the backoff ceiling. Zero means 10s.
	MaxBackoff time.Duration
	// MaxRetryAfter is the longest Retry-After the Transport waits for
	// before retrying; a response that asks for longer is returned to the
	// caller as it is, rather than retried early. Zero means 30s (the
	// store's default lease, the longest a 409 from New asks for by
	// default).
	MaxRetryAfter time.Duration
	// MaxBufferedBody is the largest body, without GetBody, that is read
	// into memory so that retries can send it again. Zero means 1 MiB;
	// negative means never: such bodies are sent once.
	MaxBufferedBody int64
	// NewKey returns a fresh key for a request without one. It must
	// return 1 to 255 bytes of visible ASCII, or RoundTrip fails. Nil
	// means a random (version 4) UUID.
	NewKey func() string
}

// DefaultMaxBufferedBody is the default Transport.MaxBufferedBody.
const DefaultMaxBufferedBody = 1 << 20

// RoundTrip sends req, retrying as the Transport's comment describes. It
// does not modify req: each attempt is a clone with the key set.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	if !t.guards(req.Method) {
		return base.RoundTrip(req)
	}
	header := t.Header
	if header == "" {
		header = "Idempotency-Key"
	}
	header = http.CanonicalHeaderKey(header)
	attempts := t.MaxAttempts
	if attempts <= 0 {
		attempts = 5
	}
	key, err := t.key(req.Header, header)
	if err != nil {
		closeBody(req)
		return nil, fmt.Errorf("idemhttp: %s %s: %w", req.Method, req.URL.Redacted(), err)
	}
	value := FormatKey(key)
	first, getBody, length, err := t.body(req)
	if err != nil {
		return nil, fmt.Errorf("idemhttp: %s %s with key %q: reading the body: %w", req.Method, req.URL.Redacted(), key, err)
	}
	ctx := req.Context()
	for attempt := 1; ; attempt++ {
		r := req.Clone(ctx)
		for name := range r.Header {
			if strings.EqualFold(name, header) {
				delete(r.Header, name)
			}
		}
		r.Header[header] = []string{value}
		r.ContentLength = length
		if attempt == 1 {
			r.Body = first
		} else {
			body, err := getBody()
			if err != nil {
				return nil, fmt.Errorf("idemhttp: %s %s: replaying the body for attempt %d: %w", req.Method, req.URL.Redacted(), attempt, err)
			}
			r.Body = body
		}
		resp, err := base.RoundTrip(r)
		wait := time.Duration(-1)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return nil, err
			}
		case !retryStatus(resp.StatusCode) || resp.Header.Get("Idempotent-Replayed") != "":
			// A replayed response is the request's stored outcome, which
			// a retry would only replay again.
			return resp, nil
		default:
			if d, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
				if d > t.maxRetryAfter() {
					return resp, nil // the server asks for longer than we wait
				}
				wait = d
			}
		}
		if attempt >= attempts {
			if err != nil {
				return nil, fmt.Errorf("idemhttp: %s %s with key %q: giving up after %d attempts: %w", req.Method, req.URL.Redacted(), key, attempt, err)
			}
			return resp, nil
		}
		if getBody == nil {
			if err != nil {
				return nil, fmt.Errorf("idemhttp: %s %s with key %q: cannot retry: the body has no GetBody and is over MaxBufferedBody (%d), so it cannot be sent again: %w", req.Method, req.URL.Redacted(), key, t.maxBuffered(), err)
			}
			return resp, nil
		}
		if resp != nil {
			// Let the connection be reused.
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		if wait < 0 {
			wait = t.backoff(attempt)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("idemhttp: %s %s with key %q: %w", req.Method, req.URL.Redacted(), key, context.Cause(ctx))
		case <-timer.C:
		}
	}
}

// retryStatus reports whether a response with status may be retried with
// the same key: 409 (still running), 429 and 5xx.
func retryStatus(status int) bool {
	return status == http.StatusConflict || status == http.StatusTooManyRequests || status >= 500
}

// key returns the key of a request with headers h, where header is the
// canonical name of the key's header: the caller's, under any spelling of
// the name, or a new one.
func (t *Transport) key(h http.Header, header string) (string, error) {
	var key string
	found := false
	for name, vals := range h {
		if !strings.EqualFold(name, header) {
			continue
		}
		for _, v := range vals {
			k, err := ParseKey(v)
			if err != nil {
				return "", fmt.Errorf("the request's %s %q: %w", header, v, err)
			}
			if found && k != key {
				return "", fmt.Errorf("%w: the request has two different %s values, %q and %q", ErrMalformedKey, header, key, k)
			}
			key, found = k, true
		}
	}
	if found {
		return key, nil
	}
	if t.NewKey == nil {
		return newUUID(), nil
	}
	key = t.NewKey()
	if err := checkKey(key); err != nil {
		return "", fmt.Errorf("Transport.NewKey returned %q: %w", key, err)
	}
	return key, nil
}

// body returns the body of req's first attempt, a function returning the
// body again for a retry (nil when it cannot be sent again), and the
// attempts' ContentLength.
func (t *Transport) body(req *http.Request) (first io.ReadCloser, again func() (io.ReadCloser, error), length int64, err error) {
	if req.Body == nil || req.Body == http.NoBody {
		return req.Body, func() (io.ReadCloser, error) { return req.Body, nil }, req.ContentLength, nil
	}
	if req.GetBody != nil {
		return req.Body, req.GetBody, req.ContentLength, nil
	}
	limit := t.maxBuffered()
	if limit < 0 || req.ContentLength > limit {
		return req.Body, nil, req.ContentLength, nil
	}
	buf, err := io.ReadAll(io.LimitReader(req.Body, limit+1))
	if err != nil {
		req.Body.Close()
		return nil, nil, 0, err
	}
	if int64(len(buf)) > limit {
		// Too large to keep: send what was read and the rest, once.
		rest := struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf), req.Body), req.Body}
		return rest, nil, req.ContentLength, nil
	}
	req.Body.Close()
	if len(buf) == 0 {
		return http.NoBody, func() (io.ReadCloser, error) { return http.NoBody, nil }, 0, nil
	}
	again = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
	first, _ = again()
	return first, again, int64(len(buf)), nil
}

func (t *Transport) maxBuffered() int64 {
	if t.MaxBufferedBody == 0 {
		return DefaultMaxBufferedBody
	}
	return t.MaxBufferedBody
}

func (t *Transport) maxRetryAfter() time.Duration {
	if t.MaxRetryAfter > 0 {
		return t.MaxRetryAfter
	}
	return 30 * time.Second
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

func (t *Transport) guards(method string) bool {
	if t.Methods == nil {
		return method == http.MethodPost || method == http.MethodPatch
	}
	for _, m := range t.Methods {
		if m == method {
			return true
		}
	}
	return false
}

func (t *Transport) maxBackoff() time.Duration {
	if t.MaxBackoff > 0 {
		return t.MaxBackoff
	}
	return 10 * time.Second
}

// backoff returns the wait after the attempt-th attempt: a random duration
// below MinBackoff * 2^(attempt-1), capped by MaxBackoff.
func (t *Transport) backoff(attempt int) time.Duration {
	ceil := t.MinBackoff
	if ceil <= 0 {
		ceil = 100 * time.Millisecond
	}
	for i := 1; i < attempt && ceil < t.maxBackoff(); i++ {
		ceil *= 2
	}
	ceil = min(ceil, t.maxBackoff())
	return time.Duration(rand.Int64N(int64(ceil))) + 1
}

// retryAfter parses a Retry-After value, delay-seconds or an HTTP date
// (RFC 9110 section 10.2.3), into a wait from now; ok is false when v is
// absent or neither.
func retryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s < 0 {
			return 0, false
		}
		return time.Duration(min(s, int64(math.MaxInt64/time.Second))) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// newUUID returns a random version 4 UUID.
func newUUID() string {
	var b [16]byte
	if _, err := crand.Read(b[:]); err != nil {
		panic(errors.Join(errors.New("idemhttp: no randomness for a key"), err))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
