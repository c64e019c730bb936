// Package payments is the example payments API that the idem command runs
// (idem demo, idem serve): payments made at most once per idempotency key,
// behind the idemhttp middleware. Payments live in memory: it shows the
// middleware, it is not a ledger. It is internal because nothing should
// import it; it is short so that it can be read as an example of the
// middleware's options.
package payments

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemhttp"
)

// TTL is how long payment outcomes are replayed: longer than the store's
// default of 24 hours, since a client may retry a payment days later.
const TTL = 7 * 24 * time.Hour

// Payment is one charge made by the API.
type Payment struct {
	ID       string    `json:"id"`
	Amount   int64     `json:"amount"` // in cents
	Currency string    `json:"currency"`
	Status   string    `json:"status"`
	Created  time.Time `json:"created"`
}

// ErrInvalid is returned by Charge for a payment it refuses to make: the
// error says what is wrong with the amount or the currency.
var ErrInvalid = errors.New("invalid payment")

// API makes payments and remembers them. It is safe for simultaneous use
// by multiple goroutines; NewAPI makes one.
type API struct {
	// Delay is how long a charge takes (the card network); set it before
	// the first charge.
	Delay time.Duration

	mu   sync.Mutex // protects byID
	byID map[string]Payment
}

// NewAPI returns an API with no payments.
func NewAPI() *API {
	return &API{byID: map[string]Payment{}}
}

// Charge makes a payment of amount cents in currency, a three-letter
// upper-case code. An invalid payment is an error wrapping ErrInvalid; a
// ctx that ends before the charge is made is ctx's error, and nothing is
// charged.
func (a *API) Charge(ctx context.Context, amount int64, currency string) (Payment, error) {
	if amount <= 0 {
		return Payment{}, fmt.Errorf("%w: amount %d is not positive", ErrInvalid, amount)
	}
	if len(currency) != 3 || strings.ToUpper(currency) != currency {
		return Payment{}, fmt.Errorf("%w: currency %q is not a three-letter upper-case code", ErrInvalid, currency)
	}
	select {
	case <-time.After(a.Delay):
	case <-ctx.Done():
		return Payment{}, ctx.Err()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p := Payment{ID: fmt.Sprintf("pay_%06d", len(a.byID)+1), Amount: amount, Currency: currency, Status: "succeeded", Created: time.Now().UTC()}
	a.byID[p.ID] = p
	return p, nil
}

// Payment returns the payment with id, if there is one.
func (a *API) Payment(id string) (Payment, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.byID[id]
	return p, ok
}

// Charges returns the number of payments made.
func (a *API) Charges() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byID)
}

// Scope returns the scope of idempotency keys sent with credential (an
// Authorization header, or its gRPC metadata): a digest, so that
// credentials never reach the store. Anonymous callers share the empty
// scope.
func Scope(credential string) string {
	if credential == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(credential))
	return "auth-" + hex.EncodeToString(sum[:8])
}

// Handler returns the HTTP API of api behind the idempotency middleware on
// s: POST /payments, which requires an Idempotency-Key, and GET
// /payments/{id}. Listeners and the store are the caller's, so that other
// front ends can share them. log receives the middleware's lines.
func Handler(s *idem.Store, api *API, log *slog.Logger) http.Handler {
	mw := idemhttp.New(s, &idemhttp.Options{
		// Creating a payment without a key cannot be retried safely.
		Required:      func(*http.Request) bool { return true },
		Scope:         func(r *http.Request) string { return Scope(r.Header.Get("Authorization")) },
		CanonicalJSON: true,
		TTL: func(r *http.Request) time.Duration {
			if strings.HasPrefix(r.URL.Path, "/payments") {
				return TTL
			}
			return 0 // the store's default, 24 hours
		},
		ExpiresHeader: "Idempotency-Expires",
		Logger:        log,
	})
	mux := http.NewServeMux()
	mux.Handle("POST /payments", mw(http.HandlerFunc(api.create)))
	mux.HandleFunc("GET /payments/{id}", api.get)
	return mux
}

func (a *API) create(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Amount   int64  `json:"amount"`
		Currency string `json:"currency"`
	}
	d := json.NewDecoder(r.Body)
	d.DisallowUnknownFields()
	if err := d.Decode(&req); err != nil {
		problem(w, http.StatusBadRequest, "invalid payment", "the body must be a JSON object {\"amount\": cents, \"currency\": \"USD\"}: "+err.Error())
		return
	}
	p, err := a.Charge(r.Context(), req.Amount, req.Currency)
	switch {
	case errors.Is(err, ErrInvalid):
		problem(w, http.StatusBadRequest, "invalid payment", err.Error())
	case err != nil:
		// 5xx: the middleware leaves the key free for the retry.
		problem(w, http.StatusServiceUnavailable, "payment interrupted", "the request was canceled before the charge")
	default:
		w.Header().Set("Location", "/payments/"+p.ID)
		writeJSON(w, http.StatusCreated, "application/json", p)
	}
}

func (a *API) get(w http.ResponseWriter, r *http.Request) {
	p, ok := a.Payment(r.PathValue("id"))
	if !ok {
		problem(w, http.StatusNotFound, "no such payment", fmt.Sprintf("no payment has id %q", r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, "application/json", p)
}

func problem(w http.ResponseWriter, status int, title, detail string) {
	writeJSON(w, status, "application/problem+json", map[string]any{"type": "about:blank", "title": title, "status": status, "detail": detail})
}

func writeJSON(w http.ResponseWriter, status int, contentType string, v any) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
