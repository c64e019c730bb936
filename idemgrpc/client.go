package idemgrpc

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// UnaryClientInterceptor returns a client interceptor that makes unary
// calls safe to retry against a server that runs UnaryServerInterceptor:
// it gives every call without an idempotency-key metadata entry a fresh
// one, and retries codes.Unavailable and codes.Aborted with the same key
// and the same request, waiting for the delay of the error's RetryInfo
// when it has one (capped by MaxBackoff), and otherwise with exponential
// backoff and full jitter. It stops after MaxAttempts, or when the call's
// context ends, or when its deadline would pass before the next attempt;
// it then returns the last attempt's error. An error marked replayed
// (idempotent-replayed in its header) is the call's stored outcome, which
// a retry would only replay, so it is returned at once. Passing nil
// options uses the defaults; inconsistent options panic.
//
// Use it only with servers that run the server interceptor on the methods
// it calls. The key is what makes a retry safe: against a server that
// ignores it, a call that ran but whose reply was lost (an Unavailable
// after the handler ran) is run again by the retry.
func UnaryClientInterceptor(opts *ClientOptions) grpc.UnaryClientInterceptor {
	c := opts.config()
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, callOpts ...grpc.CallOption) error {
		md, _ := metadata.FromOutgoingContext(ctx)
		if len(md.Get(KeyMetadata)) == 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, KeyMetadata, c.NewKey())
		}
		var header metadata.MD
		callOpts = append(callOpts[:len(callOpts):len(callOpts)], grpc.Header(&header))
		for attempt := 1; ; attempt++ {
			header = nil
			err := invoker(ctx, method, req, reply, cc, callOpts...)
			if err == nil {
				return nil
			}
			if code := status.Code(err); code != codes.Unavailable && code != codes.Aborted {
				return err
			}
			if v := header.Get(ReplayedMetadata); len(v) > 0 && v[0] == "true" {
				return err
			}
			if attempt >= c.MaxAttempts || ctx.Err() != nil {
				return err
			}
			wait, ok := RetryDelay(err)
			if ok && wait > 0 {
				// A little jitter, so that the callers told to come back
				// at once do not all come back at the same instant.
				wait += time.Duration(rand.Int64N(int64(wait)/10 + 1))
			} else {
				wait = c.backoff(attempt)
			}
			wait = min(wait, c.MaxBackoff)
			if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= wait {
				return err // the next attempt could not finish in time
			}
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return status.Error(status.FromContextError(ctx.Err()).Code(),
					fmt.Sprintf("idemgrpc: %s: %v while waiting to retry; last attempt: %v", method, context.Cause(ctx), err))
			case <-timer.C:
			}
		}
	}
}

// backoff returns the wait after the attempt-th attempt: a random duration
// below MinBackoff * 2^(attempt-1), capped by MaxBackoff.
func (c *clientConfig) backoff(attempt int) time.Duration {
	ceil := c.MinBackoff
	for i := 1; i < attempt && ceil < c.MaxBackoff; i++ {
		ceil *= 2
	}
	ceil = min(ceil, c.MaxBackoff)
	return time.Duration(rand.Int64N(int64(ceil))) + 1
}

// newKey returns 32 random hexadecimal digits: 128 bits from crypto/rand.
func newKey() string {
	var b [16]byte
	if _, err := crand.Read(b[:]); err != nil {
		panic(errors.Join(errors.New("idemgrpc: no randomness for a key"), err))
	}
	return hex.EncodeToString(b[:])
}
