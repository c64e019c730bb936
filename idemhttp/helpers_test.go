package idemhttp_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemhttp"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// openStore opens a Badger store in a fresh directory.
func openStore(t testing.TB, opts *idem.Options) *idem.Store {
	t.Helper()
	if opts == nil {
		opts = &idem.Options{}
	}
	opts.GCInterval = -1
	s, err := idem.Open(t.TempDir(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// post builds a POST to path with body and, when key is not empty, the
// Idempotency-Key header.
func post(path, key, body string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	if key != "" {
		r.Header.Set("Idempotency-Key", key)
	}
	return r
}

// serve runs h on r and returns the recorded response.
func serve(h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// requireProblem checks that resp is an application/problem+json body of
// type typ and status, whose detail mentions every one of details.
func requireProblem(t *testing.T, status int, header http.Header, body []byte, typ string, details ...string) idemhttp.Problem {
	t.Helper()
	require.Equal(t, "application/problem+json", header.Get("Content-Type"), "body: %s", body)
	var p idemhttp.Problem
	require.NoError(t, json.Unmarshal(body, &p), "body: %s", body)
	require.Equal(t, typ, p.Type)
	require.Equal(t, status, p.Status)
	require.NotEmpty(t, p.Title)
	for _, d := range details {
		require.Contains(t, p.Detail, d)
	}
	return p
}

func requireRecProblem(t *testing.T, w *httptest.ResponseRecorder, status int, typ string, details ...string) idemhttp.Problem {
	t.Helper()
	require.Equal(t, status, w.Code, "body: %s", w.Body)
	return requireProblem(t, status, w.Header(), w.Body.Bytes(), typ, details...)
}

func readAll(t testing.TB, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return b
}
