package idemhttp

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// Transport is an http.RoundTripper that makes POST and PATCH requests
// safe to retry: it gives every such request without an idempotency key a
// fresh one (a random UUID), and retries network errors, 409 (the key is
// still running) and 503 (the server's store is unavailable) with the same
// key, waiting with exponential backoff and full jitter, or for as long as
// the response's Retry-After asks. It stops after MaxAttempts or when the
// request's context ends. Other methods and other statuses pass through
// once, and so does a 409 or 503 marked "Idempotent-Replayed: true" (the
// stored outcome of the request, which a retry would only replay).
//
// Replaying a request body needs req.GetBody, which http.NewRequest sets
// for bytes, strings and bytes.Reader bodies; a request whose body cannot
// be replayed is sent once, and a failure says that GetBody was missing.
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
	// MaxBackoff caps the backoff, and any Retry-After the server asks
	// for. Zero means 10s.
	MaxBackoff time.Duration
	// NewKey returns a fresh key for a request without one. Nil means a
	// random (version 4) UUID.
	NewKey func() string
}

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
	attempts := t.MaxAttempts
	if attempts <= 0 {
		attempts = 5
	}
	key := req.Header.Get(header)
	if key == "" {
		if t.NewKey != nil {
			key = t.NewKey()
		} else {
			key = newUUID()
		}
	}
	ctx := req.Context()
	hasBody := req.Body != nil && req.Body != http.NoBody
	for attempt := 1; ; attempt++ {
		r := req.Clone(ctx)
		r.Header.Set(header, key)
		if attempt > 1 && hasBody {
			body, err := req.GetBody()
			if err != nil {
				return nil, fmt.Errorf("idemhttp: %s %s: replaying the body for attempt %d: %w", req.Method, req.URL.Redacted(), attempt, err)
			}
			r.Body = body
		}
		resp, err := base.RoundTrip(r)
		var wait time.Duration
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return nil, err
			}
		case (resp.StatusCode == http.StatusConflict || resp.StatusCode == http.StatusServiceUnavailable) &&
			resp.Header.Get("Idempotent-Replayed") == "":
			// A replayed 409 or 503 is the request's stored outcome, which
			// a retry would only replay again.
			wait = retryAfter(resp.Header.Get("Retry-After"), time.Now())
		default:
			return resp, nil
		}
		if attempt >= attempts {
			if err != nil {
				return nil, fmt.Errorf("idemhttp: %s %s with key %q: giving up after %d attempts: %w", req.Method, req.URL.Redacted(), key, attempt, err)
			}
			return resp, nil
		}
		if hasBody && req.GetBody == nil {
			if err != nil {
				return nil, fmt.Errorf("idemhttp: %s %s with key %q: cannot retry: the request has a body but no GetBody to replay it (build it with http.NewRequest and a bytes or strings reader, or set GetBody): %w", req.Method, req.URL.Redacted(), key, err)
			}
			return resp, nil
		}
		if resp != nil {
			// Let the connection be reused.
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		if wait <= 0 {
			wait = t.backoff(attempt)
		}
		wait = min(wait, t.maxBackoff())
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("idemhttp: %s %s with key %q: %w", req.Method, req.URL.Redacted(), key, context.Cause(ctx))
		case <-timer.C:
		}
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

// retryAfter parses a Retry-After value (seconds or an HTTP date), or
// returns 0.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
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
