// Package idemhttp makes HTTP handlers idempotent with the Idempotency-Key
// header (draft-ietf-httpapi-idempotency-key-header), storing outcomes in
// an *idem.Store, and gives clients a Transport that retries safely.
//
// # Server
//
// New returns middleware:
//
//	mw := idemhttp.New(store, &idemhttp.Options{
//		Scope: func(r *http.Request) string { return principal(r) },
//	})
//	mux.Handle("POST /payments", mw(createPayment))
//
// A guarded request (POST or PATCH, with a key) is answered in one of
// these ways:
//
//   - first time: the handler runs, its response is stored, then sent;
//   - retry after completion: the stored response, byte for byte (status,
//     headers, body), plus "Idempotent-Replayed: true";
//   - retry while the first still runs: 409 with Retry-After, by default
//     as long as the first has run so far, from 1 second up to when its
//     lease lapses (Options.RetryAfter);
//   - the key reused with another request (method, route or body differ):
//     422;
//   - a malformed key, or a missing one where Options.Required says it is
//     needed: 400; a body over Options.MaxBodyBytes: 413;
//   - the store cannot be asked (closed, disk or network failure): 503 and
//     the handler is not run.
//
// Errors are application/problem+json (RFC 9457), of the Problem* types,
// whose links lead to idemhttp's README.md: a section per problem saying
// what the client should do. Options.ProblemTypeBase points them at the
// service's own documentation instead, and Options.DescribedBy adds a
// `Link: <...>; rel="describedby"` header to every error. PolicyHandler
// publishes the service's idempotency policy (header, methods, key format,
// expiry) as JSON, as the draft asks (section 2.5.2).
//
// # Scope
//
// Keys are chosen by clients, so two clients can send the same one. Set
// Options.Scope to the authenticated principal, tenant or API key id: it is
// part of the stored key, so a client never receives another client's
// response by sending (or guessing) its key. The default scope is the
// empty string, shared by everyone, which is right only for a service with
// one client.
//
// # What is stored
//
// Set-Cookie, hop-by-hop headers and trailers are never stored; the first
// response still carries them. Date is stamped by net/http on every
// message, so replays carry their own. The stored form is a small
// versioned encoding of status, headers and body (see response.go) in the
// record's Response bytes.
//
// Options.Policy decides by status: by default 2xx and 3xx are completed,
// 4xx are stored as failures (both replayed), and 429 and 5xx are
// retryable failures, so the client's retry runs the handler again. A
// handler that panics leaves a retryable failure too, and the panic goes on
// to net/http.
//
// A response the handler streams (calls Flush), hijacks, or that is larger
// than the store's MaxResponseSize cannot be replayed. By default the
// client gets it as it is and the key ends as a permanent failure: retries
// get 422 ProblemNotStored instead of running the handler twice, since the
// side effect has most likely happened. Options.PassThroughUnstored
// releases the key instead, for streaming handlers that are safe to
// repeat.
//
// # Leases
//
// While the handler runs, its lease is renewed every third of its length
// (Options.LeaseTTL, default the store's), so long handlers keep their
// key. If the lease is lost anyway (the key was deleted, or the store was
// unreachable longer than a lease), the handler's context is canceled with
// a cause wrapping idem.ErrLeaseLost. Options.TTL sets how long records of
// a route are kept (payments 7 days, say), through idem.WithTTL.
//
// A handler whose lease lapsed and whose key another request took over
// (on another instance, say) may still finish. The store then refuses its
// outcome (fencing), and its response, kept in memory until then, is not
// sent: the client gets what the key holds now instead. The newer
// request's stored outcome is replayed (with "Idempotent-Replayed: true");
// a newer request still running gives 409 with Retry-After; a key that was
// deleted or released, or whose newer run failed and may be retried,
// gives 409 ProblemLeaseLost with Retry-After. A response that was
// streamed, hijacked or too large to keep has reached the client already,
// so this protection does not cover it.
//
// # Client
//
// Transport sends the key of POST and PATCH requests as the draft's
// quoted Structured Field string, giving each a fresh key when it has
// none, and retries network errors, 409, 429 and 5xx with that key and the
// same body, with bounded, jittered exponential backoff, honouring
// Retry-After (up to Transport.MaxRetryAfter):
//
//	client := &http.Client{Transport: &idemhttp.Transport{}}
package idemhttp
