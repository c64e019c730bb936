// Package idemgrpc makes unary gRPC methods idempotent with an
// idempotency-key metadata entry, storing outcomes in an *idem.Store, and
// gives clients an interceptor that retries safely.
//
// # Server
//
// UnaryServerInterceptor returns an interceptor:
//
//	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(
//		idemgrpc.UnaryServerInterceptor(store, &idemgrpc.Options{
//			Scope: func(ctx context.Context) string { return principal(ctx) },
//		}),
//	))
//
// A unary call with an idempotency-key is answered in one of these ways:
//
//   - first time: the handler runs, its outcome is stored, then returned;
//   - retry after it finished: the stored reply (the same message, rebuilt
//     with the handler's reply type) or the stored error (code, message
//     and details), with the header metadata "idempotent-replayed: true";
//     the handler does not run again;
//   - retry while the first still runs: codes.Aborted with a RetryInfo
//     detail (Options.RetryDelay);
//   - the key reused with another request or another method:
//     codes.FailedPrecondition, and the handler is not run;
//   - an empty key, one over 255 bytes, one that is not visible ASCII, or
//     a missing one where Options.RequireKey says it is needed:
//     codes.InvalidArgument;
//   - the store cannot be asked (closed, disk or network failure):
//     codes.Unavailable, and the handler is not run.
//
// A call without the metadata passes straight through. Every error the
// interceptor makes itself carries an errdetails.ErrorInfo of ErrorDomain
// with one of the Reason constants, so a client can tell the interceptor's
// FailedPrecondition or Aborted from its handler's: see Reason.
//
// The fingerprint a retry must match is SHA-256 of the full method name
// and the request's deterministic proto encoding (Fingerprint).
// Deterministic is not canonical across schema changes: set
// Options.Fingerprint where retries may cross one.
//
// Streaming calls are not covered: there is no stream interceptor, and a
// streaming method runs as if the package were not there. Only the reply
// or the error status is stored; header and trailer metadata the handler
// sets are sent on the first call and not replayed.
//
// # Scope
//
// Keys are chosen by clients, so two clients can send the same one. Set
// Options.Scope to the authenticated principal, tenant or API key id: it is
// part of the stored key, so a client never receives another client's
// reply by sending (or guessing) its key. The default scope is the empty
// string, shared by everyone, which is right only for a service with one
// client.
//
// # What is stored
//
// A reply is stored as an anypb.Any of the message: its type URL and its
// bytes. The interceptor cannot know a method's reply type without running
// the handler, so the type travels with the bytes, and a replay rebuilds
// the message with anypb.UnmarshalNew from the types registered in the
// program (every generated message registers itself). A reply of a type
// not in the registry, or larger than the store's MaxResponseSize, is
// returned to the first caller but cannot be replayed: the key ends as a
// permanent failure, and retries get codes.FailedPrecondition with reason
// ReasonNotStored instead of running the handler twice.
//
// Handler errors with codes Unavailable, ResourceExhausted, Internal,
// Unknown, DeadlineExceeded, Aborted, Canceled and Unauthenticated leave
// the key retryable: nothing is stored, and the client's retry runs the
// handler again. Any other code is stored as the whole status (code,
// message and details) and replayed. Options.Retryable changes that. A
// handler that panics leaves the key retryable too, and the panic goes on
// (chain a recovery interceptor outside this one).
//
// # Leases
//
// While the handler runs, its lease is renewed every third of its length
// (Options.LeaseTTL, default the store's) through idem.Lease.KeepAlive, as
// idem.Store.Do and idemhttp renew theirs. If the lease is lost anyway
// (the key was deleted, or the store was unreachable longer than a lease),
// the handler's context is canceled with a cause wrapping
// idem.ErrLeaseLost, and the caller never gets the handler's stale
// outcome: it gets the outcome another holder stored, or codes.Aborted.
//
// # Client
//
// UnaryClientInterceptor gives calls a key when they have none, and
// retries codes.Unavailable and codes.Aborted with that key and the same
// request, with backoff and jitter, honouring RetryInfo:
//
//	conn, err := grpc.NewClient(addr, creds,
//		grpc.WithUnaryInterceptor(idemgrpc.UnaryClientInterceptor(nil)))
//
// It is for servers that run UnaryServerInterceptor. Against a server
// without it, a retry after a reply was lost runs the call twice.
package idemgrpc
