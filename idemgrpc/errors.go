package idemgrpc

import (
	"errors"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ErrorDomain is the Domain of the errdetails.ErrorInfo carried by every
// error the server interceptor makes itself, so that a client can tell it
// from an error of the handler with the same code.
const ErrorDomain = "idem.idemdb.github.io"

// Reasons in the errdetails.ErrorInfo of the interceptor's own errors.
const (
	// ReasonKeyRequired (codes.InvalidArgument): the method requires an
	// idempotency key (Options.RequireKey) and the call had none.
	ReasonKeyRequired = "KEY_REQUIRED"
	// ReasonInvalidKey (codes.InvalidArgument): the key is empty, longer
	// than MaxKeyLen, not visible ASCII, or sent more than once.
	ReasonInvalidKey = "INVALID_KEY"
	// ReasonKeyReused (codes.FailedPrecondition): the key was first used
	// with another request or another method. The handler was not run.
	ReasonKeyReused = "KEY_REUSED"
	// ReasonInProgress (codes.Aborted, with errdetails.RetryInfo): a call
	// with the key is still running. Retry with the same key after the
	// RetryInfo delay.
	ReasonInProgress = "IN_PROGRESS"
	// ReasonStoreUnavailable (codes.Unavailable): the idempotency store
	// could not be asked (closed, or failing), so the handler was not run.
	// Retry with the same key.
	ReasonStoreUnavailable = "STORE_UNAVAILABLE"
	// ReasonLeaseLost (codes.Aborted): the handler ran, but the key was
	// taken from it (its lease lapsed, or the record was deleted) before
	// its outcome could be stored, and no newer outcome is stored to
	// answer with instead.
	ReasonLeaseLost = "LEASE_LOST"
	// ReasonNotStored (codes.FailedPrecondition): the call with the key
	// ran, but its reply could not be stored (too large for the store, or
	// of a message type not in the protobuf registry), so it cannot be
	// replayed. It is not run again: check its outcome another way.
	ReasonNotStored = "NOT_STORED"
	// ReasonCorrupt (codes.Internal): the outcome stored for the key
	// cannot be decoded. The handler is not run again.
	ReasonCorrupt = "CORRUPT"
	// ReasonFingerprintFailed (codes.Internal): the request could not be
	// fingerprinted (Options.Fingerprint failed, or the request is not a
	// proto message), or its fingerprint is larger than the store
	// accepts. The handler was not run.
	ReasonFingerprintFailed = "FINGERPRINT_FAILED"
)

// Reason returns the ErrorInfo reason of an error made by the server
// interceptor (one of the Reason constants), or "" for any other error,
// such as one the handler returned.
func Reason(err error) string {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}

// RetryDelay returns the delay of err's errdetails.RetryInfo, and false
// when it has none.
func RetryDelay(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return max(ri.GetRetryDelay().AsDuration(), 0), true
		}
	}
	return 0, false
}

// newError returns a status error with code and msg, whose details are an
// ErrorInfo of ErrorDomain with reason, followed by extra.
func newError(code codes.Code, reason, msg string, extra ...protoadapt.MessageV1) error {
	details := append([]protoadapt.MessageV1{&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: reason}}, extra...)
	st, err := status.New(code, msg).WithDetails(details...)
	if err != nil {
		// Only a detail that cannot be marshalled fails, and these can.
		panic(errors.Join(errors.New("idemgrpc: adding error details"), err))
	}
	return st.Err()
}

// retryInfo returns a RetryInfo detail asking for a retry after d.
func retryInfo(d time.Duration) *errdetails.RetryInfo {
	return &errdetails.RetryInfo{RetryDelay: durationpb.New(d)}
}
