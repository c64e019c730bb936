package crashtest_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemhttp"
)

// The handler behind idemhttp sees its request's key in r.Context(), and
// a run of the same request after a failure derives the same sub key:
// what the two-service crash test relies on.
func TestKeyFromInsideMiddleware(t *testing.T) {
	s, err := idem.Open("", &idem.Options{InMemory: true, GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })

	var (
		mu   sync.Mutex
		keys []string
		subs []string
	)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k, ok := idem.KeyFrom(r.Context())
		mu.Lock()
		defer mu.Unlock()
		if !ok {
			k = "(none)"
		}
		keys = append(keys, k)
		subs = append(subs, idem.SubKey(r.Context(), "charge"))
		if len(keys) == 1 {
			w.WriteHeader(http.StatusInternalServerError) // retryable: the retry runs again
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	srv := httptest.NewServer(idemhttp.New(s, nil)(h))
	t.Cleanup(srv.Close)

	send := func(key string) int {
		req, err := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("{}"))
		require.NoError(t, err)
		req.Header.Set("Idempotency-Key", key)
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, http.StatusInternalServerError, send("pay-1"))
	assert.Equal(t, http.StatusCreated, send("pay-1"))
	assert.Equal(t, http.StatusCreated, send("pay-2"))

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, keys, 3)
	for _, k := range keys {
		assert.NotEqual(t, "(none)", k, "idem.KeyFrom inside an idemhttp handler")
	}
	assert.True(t, strings.HasSuffix(keys[0], "pay-1"), "the stored key %q carries the client's key", keys[0])
	assert.Equal(t, keys[0], keys[1])
	assert.Len(t, subs[0], 64)
	assert.Equal(t, subs[0], subs[1], "both runs of pay-1 derive the same sub key")
	assert.NotEqual(t, subs[0], subs[2], "pay-2 derives another")
}
