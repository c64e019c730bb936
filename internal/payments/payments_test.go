package payments_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/payments"
)

func TestHandler(t *testing.T) {
	s, err := idem.Open(t.TempDir(), nil)
	require.NoError(t, err)
	defer s.Close()
	api := payments.NewAPI()
	srv := httptest.NewServer(payments.Handler(s, api, slog.New(slog.DiscardHandler)))
	defer srv.Close()

	do := func(method, path, key, auth, body string) (*http.Response, []byte) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}

	resp, _ := do("POST", "/payments", "", "", `{"amount":5000,"currency":"USD"}`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, "a key is required")

	resp, body := do("POST", "/payments", "k1", "Bearer a", `{"amount":5000,"currency":"USD"}`)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	var p payments.Payment
	require.NoError(t, json.Unmarshal(body, &p))
	require.Equal(t, "/payments/"+p.ID, resp.Header.Get("Location"))
	exp, err := http.ParseTime(resp.Header.Get("Idempotency-Expires"))
	require.NoError(t, err)
	require.WithinDuration(t, time.Now().Add(payments.TTL), exp, time.Minute, "payments are kept 7 days")

	// Same key, reordered JSON: the same request (canonical JSON).
	resp, again := do("POST", "/payments", "k1", "Bearer a", `{ "currency": "USD", "amount": 5000 }`)
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
	require.Equal(t, body, again)
	// Another principal with the same key is another payment.
	resp, _ = do("POST", "/payments", "k1", "Bearer b", `{"amount":5000,"currency":"USD"}`)
	require.Empty(t, resp.Header.Get("Idempotent-Replayed"))
	require.Equal(t, 2, api.Charges())

	resp, got := do("GET", resp.Header.Get("Location"), "", "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(got), `"amount":5000`)
	resp, _ = do("GET", "/payments/nope", "", "", "")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	// An invalid payment is refused, and the refusal is replayed.
	resp, _ = do("POST", "/payments", "k2", "", `{"amount":-1,"currency":"USD"}`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	resp, b := do("POST", "/payments", "k2", "", `{"amount":-1,"currency":"USD"}`)
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
	require.Contains(t, string(b), "not positive")
	require.Equal(t, 2, api.Charges())
}

// Charge refuses invalid payments and charges nothing when the caller
// leaves before the charge.
func TestCharge(t *testing.T) {
	api := payments.NewAPI()
	ctx := context.Background()
	for _, c := range []struct {
		amount   int64
		currency string
		want     string
	}{
		{0, "USD", "amount 0 is not positive"},
		{-5, "USD", "amount -5 is not positive"},
		{100, "usd", `currency "usd" is not a three-letter upper-case code`},
		{100, "EURO", `currency "EURO" is not`},
	} {
		_, err := api.Charge(ctx, c.amount, c.currency)
		assert.ErrorIs(t, err, payments.ErrInvalid)
		assert.ErrorContains(t, err, c.want)
	}
	api.Delay = time.Hour
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err := api.Charge(canceled, 100, "USD")
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 0, api.Charges())

	api.Delay = 0
	p, err := api.Charge(ctx, 5000, "USD")
	require.NoError(t, err)
	assert.Equal(t, payments.Payment{ID: "pay_000001", Amount: 5000, Currency: "USD", Status: "succeeded", Created: p.Created}, p)
	got, ok := api.Payment(p.ID)
	assert.True(t, ok)
	assert.Equal(t, p, got)
	assert.Equal(t, "", payments.Scope(""), "anonymous callers share the empty scope")
	assert.NotEqual(t, payments.Scope("Bearer a"), payments.Scope("Bearer b"))
	assert.NotContains(t, payments.Scope("Bearer secret"), "secret")
}
