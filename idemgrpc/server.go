package idemgrpc

import (
	"context"
	"errors"
	"fmt"
	"github.com/idemdb/idem/internal/endctx"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/idemdb/idem"
)

// Metadata keys.
const (
	// KeyMetadata is the request metadata key carrying the idempotency key.
	KeyMetadata = "idempotency-key"
	// ReplayedMetadata is the response header metadata key set to "true"
	// on a replayed outcome, reply or error.
	ReplayedMetadata = "idempotent-replayed"
)

// UnaryServerInterceptor returns an interceptor that makes the unary
// methods it serves idempotent with the idempotency-key metadata, storing
// outcomes in s. Passing nil options uses the defaults. It panics when the
// options are inconsistent, so that misconfiguration shows at start-up
// rather than on a call.
func UnaryServerInterceptor(s *idem.Store, opts *Options) grpc.UnaryServerInterceptor {
	if s == nil {
		panic("idemgrpc: UnaryServerInterceptor with a nil store")
	}
	c := opts.config()
	so := s.Options()
	if so.MaxKeySize < minStoreKeySize {
		panic(fmt.Sprintf("idemgrpc: the store's MaxKeySize %d is below the %d bytes the interceptor needs", so.MaxKeySize, minStoreKeySize))
	}
	lease := c.LeaseTTL
	if lease == 0 {
		lease = so.LeaseTTL
	}
	i := &interceptor{cfg: c, s: s, lease: lease, now: so.Now, maxKey: so.MaxKeySize, maxResp: so.MaxResponseSize}
	return i.intercept
}

type interceptor struct {
	cfg     config
	s       *idem.Store
	lease   time.Duration
	now     func() time.Time // the store's clock
	maxKey  int
	maxResp int
}

func (i *interceptor) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	key, ok, err := i.key(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	if !ok {
		return handler(ctx, req)
	}
	fp, err := i.cfg.Fingerprint(info.FullMethod, req)
	if err != nil {
		i.cfg.Logger.Error("idemgrpc: fingerprinting the request failed", "method", info.FullMethod, "err", err)
		return nil, newError(codes.Internal, ReasonFingerprintFailed,
			"the request could not be fingerprinted, so it was not run: "+err.Error())
	}
	scope := ""
	if i.cfg.Scope != nil {
		scope = i.cfg.Scope(ctx)
	}
	skey := storedKey(scope, key, i.maxKey)

	ctx = idem.WithLeaseTTL(ctx, i.lease)
	if i.cfg.TTL != nil {
		ctx = idem.WithTTL(ctx, i.cfg.TTL(ctx, info.FullMethod))
	}
	lease, rec, err := i.s.Begin(ctx, skey, fp)
	switch {
	case errors.Is(err, idem.ErrInProgress) && rec != nil:
		return nil, i.inProgress(rec)
	case errors.Is(err, idem.ErrFingerprintMismatch):
		return nil, newError(codes.FailedPrecondition, ReasonKeyReused, fmt.Sprintf(
			"this idempotency key was first used with another request; %s with this request is a different call, so send it with a new key", info.FullMethod))
	case errors.Is(err, idem.ErrTooLarge):
		i.cfg.Logger.Error("idemgrpc: the fingerprint is too large for the store", "method", info.FullMethod, "err", err)
		return nil, newError(codes.Internal, ReasonFingerprintFailed,
			"the request's fingerprint is larger than the store accepts, so the call was not run")
	case errors.Is(err, idem.ErrCorrupt):
		i.cfg.Logger.Error("idemgrpc: stored record is corrupt", "key", skey, "err", err)
		return nil, newError(codes.Internal, ReasonCorrupt,
			"the record stored for this idempotency key cannot be decoded, so the call is not run")
	case err != nil && ctx.Err() != nil:
		return nil, status.FromContextError(ctx.Err()).Err() // the client has gone away
	case err != nil:
		i.cfg.Logger.Error("idemgrpc: store unavailable", "key", skey, "err", err)
		return nil, newError(codes.Unavailable, ReasonStoreUnavailable,
			"the idempotency store could not be reached, so the call was not run; retry with the same key")
	case lease == nil:
		return i.replay(ctx, rec)
	}
	return i.run(ctx, req, info, handler, lease)
}

// key returns the call's idempotency key, and false when it has none and
// needs none.
func (i *interceptor) key(ctx context.Context, method string) (string, bool, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get(KeyMetadata)
	switch len(values) {
	case 0:
		if i.cfg.RequireKey != nil && i.cfg.RequireKey(method) {
			return "", false, newError(codes.InvalidArgument, ReasonKeyRequired,
				fmt.Sprintf("%s requires an %s metadata entry", method, KeyMetadata))
		}
		return "", false, nil
	case 1:
	default:
		return "", false, newError(codes.InvalidArgument, ReasonInvalidKey,
			fmt.Sprintf("%d %s metadata values; send exactly one", len(values), KeyMetadata))
	}
	if err := checkKey(values[0]); err != nil {
		return "", false, newError(codes.InvalidArgument, ReasonInvalidKey, fmt.Sprintf("%s metadata: %v", KeyMetadata, err))
	}
	return values[0], true, nil
}

// inProgress returns the error for a call whose key rec is still running.
func (i *interceptor) inProgress(rec *idem.Record) error {
	d := i.cfg.RetryDelay(rec, i.now())
	return newError(codes.Aborted, ReasonInProgress,
		fmt.Sprintf("a call with this idempotency key is still running; retry after %v", d), retryInfo(d))
}

// replay returns the outcome stored in rec, a finished record, and marks
// the response as replayed.
func (i *interceptor) replay(ctx context.Context, rec *idem.Record) (any, error) {
	if rec.State == idem.StateFailed && len(rec.Response) == 0 {
		// Stored without a response by another writer of the store (Do
		// ends an oversized response this way).
		setReplayed(ctx)
		return nil, notStored("the response was not recorded")
	}
	reply, st, err := decode(rec.Response)
	if err == nil && st != nil && st.Code() == codes.OK {
		err = errors.New("stored status has code OK")
	}
	if err != nil {
		i.cfg.Logger.Error("idemgrpc: stored outcome is corrupt", "key", rec.Key, "err", err)
		return nil, newError(codes.Internal, ReasonCorrupt,
			"the outcome stored for this idempotency key cannot be decoded, so it is not replayed and the call is not run again")
	}
	setReplayed(ctx)
	if st != nil {
		return nil, st.Err()
	}
	return reply, nil
}

func setReplayed(ctx context.Context) {
	// Fails only when headers were sent already (or outside a call), when
	// there is nothing better to do than to send the outcome without it.
	_ = grpc.SetHeader(ctx, metadata.Pairs(ReplayedMetadata, "true"))
}

func notStored(why string) error {
	return newError(codes.FailedPrecondition, ReasonNotStored,
		"the call with this idempotency key ran, but its outcome could not be stored ("+why+"), so it cannot be replayed; it is not run again: check its outcome another way")
}

// run runs the handler under lease and ends the lease by the outcome.
func (i *interceptor) run(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, lease *idem.Lease) (any, error) {
	// Ending the lease outlives the client's call.
	endCtx, endCancel := endctx.New(ctx)
	defer endCancel()

	// Renewal outlives the client's call too (Lease.Run): a handler past
	// its side effect may finish after the client has gone, and a lapsed
	// lease would let the client's retry run it again. A panic leaves the
	// key to the client's retry.
	var (
		reply any
		herr  error
	)
	lease.Run(ctx, func(ctx context.Context) { reply, herr = handler(ctx, req) })

	if herr != nil {
		st := handlerStatus(herr)
		if i.cfg.Retryable(st.Code()) {
			if err := lease.Fail(endCtx, nil, true); err != nil {
				return i.ended(ctx, endCtx, lease, err, nil, herr)
			}
			return nil, herr
		}
		data, err := encodeStatus(st)
		if err == nil && len(data) > i.maxResp {
			err = fmt.Errorf("%d bytes, more than the store's maximum response size %d", len(data), i.maxResp)
		}
		if err != nil {
			i.unstored(endCtx, lease, "error status", err)
			return nil, herr
		}
		if err := lease.Fail(endCtx, data, false); err != nil {
			return i.ended(ctx, endCtx, lease, err, nil, herr)
		}
		return nil, herr
	}

	data, err := encodeReply(reply)
	if err == nil && len(data) > i.maxResp {
		err = fmt.Errorf("%w: %d bytes, more than the store's maximum response size %d", errUnstorable, len(data), i.maxResp)
	}
	if err != nil {
		i.unstored(endCtx, lease, "reply", err)
		return reply, nil
	}
	if err := lease.Complete(endCtx, data); err != nil {
		return i.ended(ctx, endCtx, lease, err, reply, nil)
	}
	return reply, nil
}

// handlerStatus returns the status of the handler's error err, as grpc-go
// would send it.
func handlerStatus(err error) *status.Status {
	if st, ok := status.FromError(err); ok {
		return st
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err)
	}
	return status.New(codes.Unknown, err.Error())
}

// unstored ends lease for an outcome that cannot be stored: the caller
// gets it, and the key ends as a permanent failure, since the handler has
// most likely done its side effect and must not run twice.
func (i *interceptor) unstored(ctx context.Context, lease *idem.Lease, what string, cause error) {
	i.cfg.Logger.Error("idemgrpc: the outcome cannot be stored; retries will get NOT_STORED", "key", lease.Key(), "outcome", what, "err", cause)
	data, err := encodeStatus(status.Convert(notStored(cause.Error())))
	if err == nil {
		err = lease.Fail(ctx, data, false)
	}
	if err != nil {
		i.cfg.Logger.Error("idemgrpc: ending the key of an unstored outcome", "key", lease.Key(), "err", err)
	}
}

// ended answers a call whose outcome (reply or herr) could not be stored:
// err is what ending the lease returned. A lost lease means another holder
// took the key over, and its outcome, not this stale one, is the answer.
// Any other store failure leaves the key as it was (its lease lapses) and
// the caller gets the outcome.
func (i *interceptor) ended(ctx, endCtx context.Context, lease *idem.Lease, err error, reply any, herr error) (any, error) {
	if !errors.Is(err, idem.ErrLeaseLost) {
		i.cfg.Logger.Error("idemgrpc: storing the outcome failed; a retry will run the call again", "key", lease.Key(), "err", err)
		return reply, herr
	}
	i.cfg.Logger.Warn("idemgrpc: lease lost before the outcome was stored; answering with the stored record", "key", lease.Key())
	rec, gerr := i.s.Get(endCtx, lease.Key())
	switch {
	case gerr == nil && rec.State == idem.StateInProgress:
		return nil, i.inProgress(rec)
	case gerr == nil && !(rec.State == idem.StateFailed && rec.Retryable):
		return i.replay(ctx, rec)
	}
	return nil, newError(codes.Aborted, ReasonLeaseLost,
		"the call with this idempotency key lost its lease before its outcome was stored, and no other outcome is stored; retry with the same key")
}
