package idemhttp

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/idemdb/idem"
)

// KeyPolicy is the idempotency policy a service publishes for its clients,
// as draft-ietf-httpapi-idempotency-key-header-07 section 2.5.2 asks of a
// resource: which header and methods, what a key must look like, and how
// long outcomes are kept. It serves itself as JSON (ServeHTTP), and a
// client may decode it into the same type.
type KeyPolicy struct {
	// Header is the request header carrying the key.
	Header string `json:"header"`
	// Methods are the methods whose requests are made idempotent.
	Methods []string `json:"methods"`
	// Key says what a key must look like.
	Key KeyFormat `json:"key"`
	// Expiry says how long an outcome is kept, and replayed, once its
	// request has ended.
	Expiry PolicyExpiry `json:"expiry"`
	// Fingerprint says what makes a retry the same request: a key sent
	// again with another request gets 422.
	Fingerprint string `json:"fingerprint"`
	// ReplayedHeader is the response header that marks a replayed outcome.
	ReplayedHeader string `json:"replayed_header"`
	// Problems is where the problem types of the errors are documented.
	Problems string `json:"problems"`
}

// KeyFormat describes the keys a service accepts.
type KeyFormat struct {
	// Syntax is how the key is sent.
	Syntax string `json:"syntax"`
	// MinLength and MaxLength bound the key's length in bytes.
	MinLength int `json:"min_length"`
	MaxLength int `json:"max_length"`
	// Characters are the bytes a key may hold.
	Characters string `json:"characters"`
	// Recommended is the kind of key clients should generate.
	Recommended string `json:"recommended"`
}

// PolicyExpiry is how long outcomes are kept, in seconds.
type PolicyExpiry struct {
	// CompletedSeconds is how long a completed request's response is
	// replayed.
	CompletedSeconds int64 `json:"completed_seconds"`
	// FailedSeconds is how long a failure that is not retried (a 4xx by
	// default) is replayed.
	FailedSeconds int64 `json:"failed_seconds"`
	// VariesByRoute is true when Options.TTL sets other lifetimes for some
	// requests; the figures above are then the defaults, and a service
	// should say which routes differ (or set the figures to the shortest).
	VariesByRoute bool `json:"varies_by_route,omitempty"`
}

// NewKeyPolicy returns the policy that the middleware New(s, opts)
// enforces, for a service that wants to change a field (the expiry of its
// routes with Options.TTL, say) before serving it. Most callers want
// PolicyHandler.
func NewKeyPolicy(s *idem.Store, opts *Options) KeyPolicy {
	if s == nil {
		panic("idemhttp: NewKeyPolicy with a nil store")
	}
	c := opts.config()
	so := s.Options()
	fp := "method, route and body bytes"
	if c.CanonicalJSON {
		fp = "method, route and body; a JSON body in canonical form (key order and whitespace do not count)"
	}
	return KeyPolicy{
		Header:  c.Header,
		Methods: append([]string(nil), c.Methods...),
		Key: KeyFormat{
			Syntax:      "Structured Field string (RFC 8941), quoted; a bare token is accepted too",
			MinLength:   1,
			MaxLength:   MaxKeyLen,
			Characters:  "visible ASCII (0x21 to 0x7E)",
			Recommended: "a random UUID (version 4), new for every request that is not a retry",
		},
		Expiry: PolicyExpiry{
			CompletedSeconds: int64(so.CompletedTTL.Seconds()),
			FailedSeconds:    int64(so.FailedTTL.Seconds()),
			VariesByRoute:    c.TTL != nil,
		},
		Fingerprint:    fp,
		ReplayedHeader: "Idempotent-Replayed",
		Problems:       c.ProblemTypeBase,
	}
}

// PolicyHandler returns a handler that serves, as JSON, the idempotency
// policy that New(s, opts) enforces (see KeyPolicy). Mount it where
// clients can find it, and set Options.DescribedBy to its path so that
// every error links to it:
//
//	opts := &idemhttp.Options{DescribedBy: "/idempotency"}
//	mux.Handle("GET /idempotency", idemhttp.PolicyHandler(store, opts))
func PolicyHandler(s *idem.Store, opts *Options) http.Handler {
	return NewKeyPolicy(s, opts)
}

// ServeHTTP serves p as JSON to GET and HEAD requests; other methods get
// 405.
func (p KeyPolicy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "max-age=300")
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}
