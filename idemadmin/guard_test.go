package idemadmin_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
	"github.com/idemdb/idem/idemtest"
)

// send sends a request to h as a browser or another tool might, with the
// given Host and headers, and returns the status and the body.
func send(h http.Handler, method, target, host, body string, header map[string]string) (int, string) {
	var r *http.Request
	if body != "" {
		r = httptest.NewRequest(method, target, strings.NewReader(body))
	} else {
		r = httptest.NewRequest(method, target, nil)
	}
	r.Host = host
	for k, v := range header {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

// A request whose Host is not loopback or an allowed name is refused with
// 421 and a problem body, before any endpoint: a page on evil.example
// whose name an attacker rebound to the admin address reads nothing and
// repairs nothing.
func TestAllowedHosts(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	asJSON := map[string]string{"Content-Type": "application/json"}
	repair := `{"token": ` + itoa(l.Token()) + `}`

	h := idemadmin.Handler(s, &idemadmin.Options{Now: clock.Now, Repairs: true})
	for _, host := range []string{"evil.example:9090", "evil.example", "10.0.0.5:9090", "localhost.evil.example", "", "127.0.0.1.nip.io:9090"} {
		code, body := send(h, "GET", "/admin/records/k", host, "", nil)
		assert.Equal(t, http.StatusMisdirectedRequest, code, host)
		assert.Contains(t, body, `"error":"host `, host)
		code, _ = send(h, "POST", "/admin/release/k", host, repair, asJSON)
		assert.Equal(t, http.StatusMisdirectedRequest, code, host)
	}
	assert.Equal(t, idem.StateInProgress, mustGet(t, s, "k").State, "nothing changed")
	for _, host := range []string{"127.0.0.1:9090", "127.0.0.1", "127.1.2.3:80", "[::1]:9090", "::1", "localhost:9090", "LocalHost.", "admin.localhost:9090", "[::ffff:127.0.0.1]:9090"} {
		code, body := send(h, "GET", "/admin/records/k", host, "", nil)
		assert.Equal(t, http.StatusOK, code, "%s: %s", host, body)
	}

	h = idemadmin.Handler(s, &idemadmin.Options{Now: clock.Now, AllowedHosts: []string{"Admin.Internal", "10.0.0.5:9090", "[fd00::1]"}})
	for host, want := range map[string]int{
		"admin.internal:9090": http.StatusOK,
		"ADMIN.INTERNAL":      http.StatusOK,
		"10.0.0.5:7777":       http.StatusOK,
		"[fd00::1]:9090":      http.StatusOK,
		"localhost:9090":      http.StatusOK,
		"10.0.0.6:9090":       http.StatusMisdirectedRequest,
		"evil.example:9090":   http.StatusMisdirectedRequest,
	} {
		code, _ := send(h, "GET", "/admin/stats", host, "", nil)
		assert.Equal(t, want, code, host)
	}

	// Listening on every address: any IP address is one of them, and no
	// DNS answer can rebind an address; names still need to be allowed.
	h = idemadmin.Handler(s, &idemadmin.Options{Now: clock.Now, AllowedHosts: []string{"0.0.0.0:9090"}})
	for host, want := range map[string]int{"10.0.0.6:9090": http.StatusOK, "[2001:db8::1]:9090": http.StatusOK, "evil.example:9090": http.StatusMisdirectedRequest} {
		code, _ := send(h, "GET", "/admin/stats", host, "", nil)
		assert.Equal(t, want, code, host)
	}
	h = idemadmin.Handler(s, &idemadmin.Options{Now: clock.Now, AllowedHosts: []string{"*"}})
	code, _ := send(h, "GET", "/admin/stats", "anything.example", "", nil)
	assert.Equal(t, http.StatusOK, code)
}

// A repair a web page of another site could make a browser send is
// refused and deletes nothing: a form's text/plain body shaped as JSON
// (415), and any request marked cross-site by Sec-Fetch-Site or by an
// Origin other than the Host (403). Tools, which send neither, and the
// same origin get through.
func TestCrossSiteRepairs(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	require.NoError(t, l.Complete(ctx, []byte("charged")))
	h := idemadmin.Handler(s, &idemadmin.Options{Now: clock.Now, Repairs: true})
	body := `{"token": ` + itoa(l.Token()) + `, "state": "completed"}`
	const host = "127.0.0.1:9090"

	for _, ct := range []string{"text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""} {
		code, resp := send(h, "POST", "/admin/delete/k", host, body, map[string]string{"Content-Type": ct, "Origin": "http://" + host})
		assert.Equal(t, http.StatusUnsupportedMediaType, code, ct)
		assert.Contains(t, resp, "application/json", ct)
	}
	for _, hdr := range []map[string]string{
		{"Origin": "http://evil.example"},
		{"Origin": "null"},
		{"Origin": "http://127.0.0.1:8080"}, // another port is another origin
		{"Sec-Fetch-Site": "cross-site"},
		{"Sec-Fetch-Site": "same-site", "Origin": "http://" + host},
	} {
		hdr["Content-Type"] = "application/json"
		code, resp := send(h, "POST", "/admin/delete/k", host, body, hdr)
		assert.Equal(t, http.StatusForbidden, code, hdr)
		assert.Contains(t, resp, "another site", hdr)
		code, _ = send(h, "GET", "/admin/records/k", host, "", hdr)
		assert.Equal(t, http.StatusForbidden, code, "reads too: %v", hdr)
	}
	assert.Equal(t, "charged", string(mustGet(t, s, "k").Response), "nothing deleted")

	// The same origin (a page served from the admin address itself) and
	// the command's own client delete it.
	code, resp := send(h, "POST", "/admin/delete/k", host, body,
		map[string]string{"Content-Type": "application/json; charset=utf-8", "Origin": "http://" + host, "Sec-Fetch-Site": "same-origin"})
	require.Equal(t, http.StatusOK, code, resp)
	_, err = s.Get(ctx, "k")
	assert.ErrorIs(t, err, idem.ErrNotFound)
}

// Protect puts another endpoint, such as /metrics, behind the same checks.
func TestProtect(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := idemadmin.Protect(ok, nil)
	code, _ := send(h, "GET", "/metrics", "127.0.0.1:9090", "", nil)
	assert.Equal(t, http.StatusTeapot, code)
	code, body := send(h, "GET", "/metrics", "evil.example:9090", "", nil)
	assert.Equal(t, http.StatusMisdirectedRequest, code)
	assert.Contains(t, body, "evil.example")
	code, _ = send(h, "GET", "/metrics", "127.0.0.1:9090", "", map[string]string{"Sec-Fetch-Site": "cross-site"})
	assert.Equal(t, http.StatusForbidden, code)
	h = idemadmin.Protect(ok, &idemadmin.Options{AllowedHosts: []string{"metrics.internal"}})
	code, _ = send(h, "GET", "/metrics", "metrics.internal:9090", "", nil)
	assert.Equal(t, http.StatusTeapot, code)
}
