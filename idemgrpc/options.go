package idemgrpc

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/idemdb/idem"
)

// Options configure the server interceptor. A nil *Options, and every zero
// field, means the default named in the field's comment.
type Options struct {
	// Scope returns the namespace of the call's key: the authenticated
	// principal, tenant or API key id. It becomes part of the stored key,
	// so two clients that send the same key never see each other's
	// replies. Nil means the empty scope, shared by every client: set it
	// whenever the service has more than one client.
	Scope func(ctx context.Context) string
	// RequireKey reports whether calls of the method (a full method name,
	// "/pkg.Service/Method") need a key: a call without one gets
	// codes.InvalidArgument with reason ReasonKeyRequired. Nil means
	// never: calls without a key pass straight through.
	RequireKey func(fullMethod string) bool

	// Fingerprint returns the digest that identifies the call's request;
	// a retry must match it. Nil means the package's Fingerprint: SHA-256
	// of the method and the request's deterministic proto encoding. An
	// error fails the call with codes.Internal, and the handler is not
	// run.
	Fingerprint func(fullMethod string, req any) ([]byte, error)

	// Retryable reports whether a handler error with the code leaves the
	// key retryable (nothing stored: the client's retry runs the handler
	// again) or is stored and replayed to every retry. Nil means
	// DefaultRetryable.
	Retryable func(codes.Code) bool

	// TTL returns how long the outcome of a call of the method is kept
	// (and replayed): 7 days for payments, say. Nil, or a result <= 0,
	// means the store's Options.CompletedTTL and FailedTTL.
	TTL func(ctx context.Context, fullMethod string) time.Duration
	// LeaseTTL is how long a lease lasts between renewals; the interceptor
	// renews it every third of that while the handler runs. Zero means the
	// store's LeaseTTL.
	LeaseTTL time.Duration
	// RetryDelay says how long a client should wait before retrying a
	// call whose key is still running: the delay of the RetryInfo detail
	// of the codes.Aborted it gets. Nil means DefaultRetryDelay.
	RetryDelay func(running *idem.Record, now time.Time) time.Duration

	// Logger receives a line for every store error and lost lease. Nil
	// means slog.Default().
	Logger *slog.Logger
}

// config is Options with defaults applied.
type config Options

func (o *Options) config() config {
	var c config
	if o != nil {
		c = config(*o)
	}
	if c.Fingerprint == nil {
		c.Fingerprint = func(fullMethod string, req any) ([]byte, error) {
			m, ok := req.(proto.Message)
			if !ok {
				return nil, fmt.Errorf("idemgrpc: the request of %s is a %T, not a proto message: set Options.Fingerprint", fullMethod, req)
			}
			return Fingerprint(fullMethod, m)
		}
	}
	if c.Retryable == nil {
		c.Retryable = DefaultRetryable
	}
	if c.LeaseTTL < 0 {
		panic(fmt.Sprintf("idemgrpc: Options.LeaseTTL is negative (%v)", c.LeaseTTL))
	}
	if c.RetryDelay == nil {
		c.RetryDelay = DefaultRetryDelay
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// DefaultRetryable is the default Options.Retryable: a handler error with
// code Unavailable, ResourceExhausted, Internal, Unknown, DeadlineExceeded,
// Aborted, Canceled or Unauthenticated may be transient, so it leaves the
// key retryable; any other code (InvalidArgument, NotFound,
// FailedPrecondition, PermissionDenied, ...) would be given again to the
// same request, so it is stored and replayed. An error that is not a gRPC
// status counts as Unknown.
func DefaultRetryable(c codes.Code) bool {
	switch c {
	case codes.Unavailable, codes.ResourceExhausted, codes.Internal, codes.Unknown,
		codes.DeadlineExceeded, codes.Aborted, codes.Canceled, codes.Unauthenticated:
		return true
	}
	return false
}

// minRetryDelay is the shortest delay DefaultRetryDelay asks for.
const minRetryDelay = 100 * time.Millisecond

// DefaultRetryDelay is the default Options.RetryDelay: as long as the
// running call has run so far (it is likely to need about as long again),
// at least 100ms, and no longer than until its lease lapses (LeaseUntil),
// when a retry would take the key over. So a retry soon after the first
// call started is told to come back shortly, not when the lease would
// lapse (up to LeaseTTL, 30 s by default, while renewal keeps it alive).
// It is idemhttp's DefaultRetryAfter without the whole seconds that
// Retry-After needs.
func DefaultRetryDelay(running *idem.Record, now time.Time) time.Duration {
	d := max(now.Sub(running.CreatedAt), minRetryDelay)
	return min(d, max(running.LeaseUntil.Sub(now), minRetryDelay))
}

// ClientOptions configure the client interceptor. A nil *ClientOptions,
// and every zero field, means the default named in the field's comment.
type ClientOptions struct {
	// MaxAttempts bounds the attempts per call, the first included. Zero
	// means 5, as idemhttp.Transport.
	MaxAttempts int
	// MinBackoff is the backoff ceiling before the second attempt; it
	// doubles each attempt up to MaxBackoff, and the wait is a random
	// duration below the ceiling. Zero means 100ms.
	MinBackoff time.Duration
	// MaxBackoff caps the backoff, and any RetryInfo delay the server asks
	// for. Zero means 10s.
	MaxBackoff time.Duration
	// NewKey returns a fresh key for a call without one. Nil means 32
	// random hexadecimal digits (128 bits from crypto/rand).
	NewKey func() string
}

// clientConfig is ClientOptions with defaults applied.
type clientConfig ClientOptions

func (o *ClientOptions) config() clientConfig {
	var c clientConfig
	if o != nil {
		c = clientConfig(*o)
	}
	if c.MaxAttempts < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 {
		panic(fmt.Sprintf("idemgrpc: ClientOptions has a negative field (MaxAttempts %d, MinBackoff %v, MaxBackoff %v)", c.MaxAttempts, c.MinBackoff, c.MaxBackoff))
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 5
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = 10 * time.Second
	}
	if c.MinBackoff > c.MaxBackoff {
		panic(fmt.Sprintf("idemgrpc: ClientOptions.MinBackoff %v is above MaxBackoff %v", c.MinBackoff, c.MaxBackoff))
	}
	if c.NewKey == nil {
		c.NewKey = newKey
	}
	return c
}
