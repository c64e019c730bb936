package idemhttp

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/idemdb/idem"
)

// Outcome says how the middleware ends a key after the handler answered
// with a status.
type Outcome uint8

const (
	// Completed stores the response as the key's completed outcome; every
	// retry gets it replayed.
	Completed Outcome = iota + 1
	// Failed stores the response as a permanent failure; every retry gets
	// it replayed, as with Completed, and the record says it failed.
	Failed
	// Retry stores a retryable failure: the next request with the key (and
	// the same fingerprint) runs the handler again.
	Retry
)

// String returns "completed", "failed" or "retry".
func (o Outcome) String() string {
	switch o {
	case Completed:
		return "completed"
	case Failed:
		return "failed"
	case Retry:
		return "retry"
	default:
		return fmt.Sprintf("unknown outcome: %d", uint8(o))
	}
}

// DefaultPolicy is the failure policy used when Options.Policy is nil:
// 2xx and 3xx are Completed, 4xx are Failed (replayed: the same request
// would be refused again), and 429, 5xx and anything else are Retry (the
// failure may be transient, so the client's retry runs the handler again).
func DefaultPolicy(status int) Outcome {
	switch {
	case status == http.StatusTooManyRequests:
		return Retry
	case status >= 200 && status < 400:
		return Completed
	case status >= 400 && status < 500:
		return Failed
	default:
		return Retry
	}
}

// Options configure the middleware. A nil *Options, and every zero field,
// means the default named in the field's comment.
type Options struct {
	// Header is the request header carrying the key. Empty means
	// "Idempotency-Key".
	Header string
	// Methods are the methods the middleware guards; requests with other
	// methods pass straight through, key or not. Nil means POST and PATCH.
	Methods []string
	// Required reports whether the request's route requires a key: a
	// guarded request without one gets 400. Nil means never: requests
	// without a key pass straight through.
	Required func(*http.Request) bool

	// Scope returns the namespace of the request's key: the authenticated
	// principal, tenant or API key id. It becomes part of the stored key,
	// so two clients that send the same key never see each other's
	// responses. Nil means the empty scope, shared by every client: set it
	// whenever the service has more than one client.
	Scope func(*http.Request) string

	// Route returns the route that goes into the request's fingerprint.
	// Nil means the URL path as sent (escaped, so /a%2Fb is not /a/b),
	// followed by "?" and the query with its parameters sorted when there
	// is one. A route pattern (r.Pattern)
	// makes a key reused on another resource of the same route replay
	// instead of failing with 422.
	Route func(*http.Request) string
	// CanonicalJSON fingerprints bodies that are valid JSON in canonical
	// form, so that key order and whitespace do not make a retry look like
	// another request. False means the body's bytes are hashed as they are.
	// The cost is linear in the body, with no tree of values built: about
	// 5-6 ms and 1-4.5 MB of allocation for 1 MiB of small values
	// (BenchmarkCanonicalJSON), against about 1 ms to hash the bytes.
	CanonicalJSON bool
	// MaxBodyBytes is the largest request body read for the fingerprint; a
	// larger body gets 413 and the handler is not run. Zero means 1 MiB.
	MaxBodyBytes int64

	// TTL returns how long the request's record is kept (and replayed):
	// 7 days for payments, say. Nil, or a result <= 0, means the store's
	// Options.CompletedTTL and FailedTTL.
	TTL func(*http.Request) time.Duration
	// LeaseTTL is how long a lease lasts between renewals; the middleware
	// renews it every third of that while the handler runs. Zero means the
	// store's LeaseTTL.
	LeaseTTL time.Duration
	// RetryAfter says how long a client should wait before retrying a
	// request whose key is still running (the 409's Retry-After, sent in
	// whole seconds, at least 1). Nil means DefaultRetryAfter.
	RetryAfter func(running *idem.Record, now time.Time) time.Duration

	// Policy decides how a key ends for each response status. Nil means
	// DefaultPolicy.
	Policy func(status int) Outcome
	// PassThroughUnstored changes what happens to a response that cannot be
	// stored: one the handler streamed (called Flush), hijacked, or that is
	// larger than the store's MaxResponseSize. By default (false) it is
	// sent to the client and the key ends as a permanent failure: retries
	// get 422 with ProblemNotStored and the handler is never run twice.
	// That is the safe default because such a handler has usually done its
	// side effect. With true, the response is sent and the key is released,
	// so a retry runs the handler again: for streaming handlers that are
	// safe to repeat.
	PassThroughUnstored bool

	// WaitFor makes a request that arrives while another with its key is
	// still running wait up to WaitFor for that one's outcome, and answer
	// with the replay, instead of a 409 at once: many clients never retry
	// a 409. After WaitFor the answer is the 409. Zero means no wait. The
	// waiting requests are bounded by the store (idem.Options.MaxWaiters;
	// past it, a 409 at once). On one machine a waiter wakes the moment
	// the outcome is stored; across instances it wakes when the other
	// instance stores it if the backend can watch keys (Redis with
	// keyspace notifications, see redisstore.Config.SetKeyspaceEvents),
	// and otherwise reads the record again every idem.Options.WaitPoll.
	WaitFor time.Duration

	// ExpiresHeader, when set, names a response header (such as
	// "Idempotency-Expires") that the middleware adds to stored and
	// replayed responses, giving when the stored response expires as an
	// HTTP date. Empty means no such header.
	ExpiresHeader string

	// ProblemTypeBase is the start of the "type" of every problem the
	// middleware answers with; the problem's name (invalid-key,
	// in-progress, ...) follows it. Point it at the service's own
	// documentation: "https://api.example.com/docs/idempotency#" for one
	// page with a section per name, or ".../problems/" for a page each.
	// Empty means DefaultProblemTypeBase, idemhttp's README, which
	// documents every problem.
	ProblemTypeBase string
	// DescribedBy, when set, is a URL (absolute, or a path on the service)
	// that every problem the middleware answers with links to, in
	// `Link: <DescribedBy>; rel="describedby"`, as the draft suggests: the
	// service's idempotency documentation, or where PolicyHandler is
	// mounted. Empty means no Link header.
	DescribedBy string

	// Logger receives a line for every store error and lost lease. Nil
	// means silent, as with idem.Options.Logger: pass the store's logger
	// (or slog.Default()) to see them.
	Logger *slog.Logger
}

// config is Options with defaults applied.
type config struct {
	Options
	methods map[string]bool
}

// DefaultMaxBodyBytes is the default of Options.MaxBodyBytes.
const DefaultMaxBodyBytes = 1 << 20

func (o *Options) config() config {
	var c config
	if o != nil {
		c.Options = *o
	}
	if c.Header == "" {
		c.Header = "Idempotency-Key"
	}
	if strings.ContainsAny(c.Header, " \t\r\n:") {
		panic(fmt.Sprintf("idemhttp: Options.Header %q is not a header name", c.Header))
	}
	c.Header = http.CanonicalHeaderKey(c.Header)
	if c.Methods == nil {
		c.Methods = []string{http.MethodPost, http.MethodPatch}
	}
	if len(c.Methods) == 0 {
		panic("idemhttp: Options.Methods is empty: no request would be guarded")
	}
	c.methods = map[string]bool{}
	for _, m := range c.Methods {
		if m == "" || strings.ToUpper(m) != m {
			panic(fmt.Sprintf("idemhttp: Options.Methods: %q is not an upper-case method", m))
		}
		c.methods[m] = true
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxBodyBytes < 0 {
		panic(fmt.Sprintf("idemhttp: Options.MaxBodyBytes is negative (%d)", c.MaxBodyBytes))
	}
	if c.LeaseTTL < 0 {
		panic(fmt.Sprintf("idemhttp: Options.LeaseTTL is negative (%v)", c.LeaseTTL))
	}
	if c.WaitFor < 0 {
		panic(fmt.Sprintf("idemhttp: Options.WaitFor is negative (%v)", c.WaitFor))
	}
	if c.Policy == nil {
		c.Policy = DefaultPolicy
	}
	if c.ExpiresHeader != "" && strings.ContainsAny(c.ExpiresHeader, " \t\r\n:") {
		panic(fmt.Sprintf("idemhttp: Options.ExpiresHeader %q is not a header name", c.ExpiresHeader))
	}
	if c.ProblemTypeBase == "" {
		c.ProblemTypeBase = DefaultProblemTypeBase
	}
	if _, err := url.Parse(c.ProblemTypeBase); err != nil || strings.ContainsAny(c.ProblemTypeBase, " \t\r\n\"") {
		panic(fmt.Sprintf("idemhttp: Options.ProblemTypeBase %q is not a URL", c.ProblemTypeBase))
	}
	if c.DescribedBy != "" {
		if _, err := url.Parse(c.DescribedBy); err != nil || strings.ContainsAny(c.DescribedBy, " \t\r\n<>\"") {
			panic(fmt.Sprintf("idemhttp: Options.DescribedBy %q is not a URL that can go in a Link header", c.DescribedBy))
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// DefaultRetryAfter is the default Options.RetryAfter: as long as the
// running request has run so far (it is likely to need about as long
// again), at least a second, and no longer than until its lease lapses,
// when a retry takes the key over. So a retry soon after the first request
// started is told to come back in a second, not when the lease would
// lapse (up to LeaseTTL, 30 s by default, while renewal keeps it alive).
func DefaultRetryAfter(running *idem.Record, now time.Time) time.Duration {
	d := max(now.Sub(running.CreatedAt), time.Second)
	return min(d, max(running.LeaseUntil.Sub(now), time.Second))
}
