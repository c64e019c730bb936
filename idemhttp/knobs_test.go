package idemhttp_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/idemhttp"
)

// Options.Route replaces what of the URL goes into the fingerprint: here
// the path without the query, so a tracking parameter that changes between
// retries does not make the retry another request.
func TestOptionsRoute(t *testing.T) {
	for _, withRoute := range []bool{false, true} {
		t.Run(fmt.Sprintf("route=%v", withRoute), func(t *testing.T) {
			s := openStore(t, nil)
			c := &charge{}
			o := &idemhttp.Options{}
			if withRoute {
				o.Route = func(r *http.Request) string { return r.URL.Path }
			}
			h := idemhttp.New(s, o)(c)
			require.Equal(t, http.StatusCreated, serve(h, post("/payments?attempt=1", "k", "a")).Code)
			w := serve(h, post("/payments?attempt=2", "k", "a"))
			if withRoute {
				require.Equal(t, "true", w.Header().Get("Idempotent-Replayed"))
			} else {
				requireRecProblem(t, w, http.StatusUnprocessableEntity, idemhttp.ProblemKeyReused)
			}
			require.EqualValues(t, 1, c.runs.Load())
		})
	}
}

// Options.Header names the key's header (in any case); the default header
// is then not a key.
func TestOptionsHeader(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, &idemhttp.Options{Header: "x-request-key"})(c)
	withKey := func() *http.Request {
		r := post("/payments", "", "a")
		r.Header.Set("X-Request-Key", `"k1"`)
		return r
	}
	require.Equal(t, http.StatusCreated, serve(h, withKey()).Code)
	require.Equal(t, "true", serve(h, withKey()).Header().Get("Idempotent-Replayed"))
	r := post("/payments", "", "a")
	r.Header.Set("X-Request-Key", "bad key")
	requireRecProblem(t, serve(h, r), http.StatusBadRequest, idemhttp.ProblemInvalidKey, "X-Request-Key")
	// Idempotency-Key is just another header now: no guard.
	serve(h, post("/payments", "k1", "a"))
	serve(h, post("/payments", "k1", "a"))
	require.EqualValues(t, 3, c.runs.Load())
}

// Options.Methods chooses the guarded methods: PUT too, PATCH no more.
func TestOptionsMethods(t *testing.T) {
	s := openStore(t, nil)
	c := &charge{}
	h := idemhttp.New(s, &idemhttp.Options{Methods: []string{http.MethodPost, http.MethodPut}})(c)
	as := func(method string) *http.Request {
		r := post("/payments/1", "k-"+method, "a")
		r.Method = method
		return r
	}
	serve(h, as(http.MethodPut))
	require.Equal(t, "true", serve(h, as(http.MethodPut)).Header().Get("Idempotent-Replayed"))
	serve(h, as(http.MethodPatch))
	require.Empty(t, serve(h, as(http.MethodPatch)).Header().Get("Idempotent-Replayed"))
	require.EqualValues(t, 3, c.runs.Load(), "PUT ran once, PATCH twice")
}

// Transport.NewKey, Header and Methods, against a middleware configured
// to match: the keys are the client's own, in its header, on its methods.
func TestTransportKnobs(t *testing.T) {
	s := openStore(t, nil)
	var runs atomic.Int64
	var lastKey atomic.Value
	h := idemhttp.New(s, &idemhttp.Options{Header: "X-Request-Key", Methods: []string{http.MethodPut}})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := runs.Add(1)
		lastKey.Store(r.Header.Get("X-Request-Key") + "|" + r.Header.Get("Idempotency-Key"))
		if n == 1 {
			// The first run fails; the Transport retries it with the same key.
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
		fmt.Fprintf(w, "run %d", n)
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	var seq atomic.Int64
	client := &http.Client{Transport: &idemhttp.Transport{
		Header:     "X-Request-Key",
		Methods:    []string{http.MethodPut},
		NewKey:     func() string { return fmt.Sprintf("order-%d", seq.Add(1)) },
		MinBackoff: time.Millisecond,
	}}
	put := func() *http.Response {
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/orders/1", strings.NewReader("x"))
		resp, err := client.Do(req)
		require.NoError(t, err)
		return resp
	}
	resp := put()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "run 2", string(readAll(t, resp.Body)))
	resp.Body.Close()
	require.Equal(t, `"order-1"|`, lastKey.Load(), "NewKey's key, in Header, quoted; no Idempotency-Key")
	require.EqualValues(t, 1, seq.Load(), "one key for the request and its retry")

	resp = put()
	resp.Body.Close()
	require.Equal(t, `"order-2"|`, lastKey.Load(), "the next request gets the next key")

	// POST is not among Methods: no key, no retry.
	resp, err := client.Post(srv.URL+"/orders", "text/plain", strings.NewReader("x"))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, "|", lastKey.Load())
	require.EqualValues(t, 2, seq.Load())
}
