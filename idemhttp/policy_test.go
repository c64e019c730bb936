package idemhttp_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemhttp"
)

// A service points the problem types at its own documentation, links its
// published policy from every error, and serves the policy: a client
// follows the Link of an error and reads the expiry, methods and key
// format the middleware enforces.
func TestPolicyAndDocumentationLinks(t *testing.T) {
	s := openStore(t, &idem.Options{CompletedTTL: 7 * 24 * time.Hour, FailedTTL: time.Hour})
	opts := &idemhttp.Options{
		Methods:         []string{http.MethodPost, http.MethodPut},
		CanonicalJSON:   true,
		ProblemTypeBase: "https://api.example.com/docs/idempotency#",
		DescribedBy:     "/idempotency",
	}
	mux := http.NewServeMux()
	mux.Handle("POST /payments", idemhttp.New(s, opts)(&charge{}))
	mux.Handle("GET /idempotency", idemhttp.PolicyHandler(s, opts))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/payments", strings.NewReader("a"))
	req.Header.Set("Idempotency-Key", `"unclosed`)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body := readAll(t, resp.Body)
	resp.Body.Close()
	p := requireProblem(t, http.StatusBadRequest, resp.Header, body, "https://api.example.com/docs/idempotency#invalid-key")
	require.Equal(t, "Malformed Idempotency-Key header", p.Title)
	require.Equal(t, `</idempotency>; rel="describedby"`, resp.Header.Get("Link"))

	// Follow the link.
	link := strings.TrimPrefix(strings.SplitN(resp.Header.Get("Link"), ">", 2)[0], "<")
	resp, err = http.Get(srv.URL + link)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var pol idemhttp.KeyPolicy
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&pol))
	require.Equal(t, "Idempotency-Key", pol.Header)
	require.Equal(t, []string{"POST", "PUT"}, pol.Methods)
	require.Equal(t, 1, pol.Key.MinLength)
	require.Equal(t, idemhttp.MaxKeyLen, pol.Key.MaxLength)
	require.Equal(t, int64(7*24*3600), pol.Expiry.CompletedSeconds)
	require.Equal(t, int64(3600), pol.Expiry.FailedSeconds)
	require.False(t, pol.Expiry.VariesByRoute)
	require.Contains(t, pol.Fingerprint, "canonical")
	require.Equal(t, "Idempotent-Replayed", pol.ReplayedHeader)
	require.Equal(t, "https://api.example.com/docs/idempotency#", pol.Problems)

	// Per-route lifetimes are flagged; the defaults link this package's
	// documentation and add no Link header.
	pol = idemhttp.NewKeyPolicy(s, &idemhttp.Options{TTL: func(*http.Request) time.Duration { return time.Hour }})
	require.True(t, pol.Expiry.VariesByRoute)
	require.Equal(t, idemhttp.DefaultProblemTypeBase, pol.Problems)
	w := serve(idemhttp.New(s, nil)(&charge{}), post("/payments", `"unclosed`, "a"))
	requireRecProblem(t, w, http.StatusBadRequest, idemhttp.ProblemInvalidKey)
	require.Empty(t, w.Header().Get("Link"))

	// Only GET and HEAD read the policy.
	w = serve(idemhttp.PolicyHandler(s, nil), httptest.NewRequest(http.MethodPost, "/idempotency", nil))
	require.Equal(t, http.StatusMethodNotAllowed, w.Code)
}

func TestPolicyOptionsMisconfigured(t *testing.T) {
	s := openStore(t, nil)
	for name, o := range map[string]*idemhttp.Options{
		"problem base with a space": {ProblemTypeBase: "https://example.com/a b#"},
		"describedby with >":        {DescribedBy: "/a>b"},
		"describedby not a URL":     {DescribedBy: "http://[::1"},
	} {
		require.Panics(t, func() { idemhttp.New(s, o) }, name)
	}
}
