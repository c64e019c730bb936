package idemhttp

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"strings"
)

// capture is the ResponseWriter the handler writes to. It keeps the status,
// headers and body in memory so that the middleware can store the response
// before the client sees it. When the response cannot be kept (the handler
// flushes, hijacks, or writes more than limit bytes), it switches to
// passing everything through to the real writer, and unstored says why.
type capture struct {
	w      http.ResponseWriter
	header http.Header
	limit  int // largest body kept in memory

	status   int         // 0 until WriteHeader
	wrote    http.Header // the headers as they were at WriteHeader
	body     bytes.Buffer
	unstored string // non-empty once the response is passing through
	hijacked bool
}

func newCapture(w http.ResponseWriter, limit int) *capture {
	return &capture{w: w, header: http.Header{}, limit: limit}
}

// Header returns the header map of the captured response. Once the
// response passes through it is the real writer's, so trailers still work.
func (c *capture) Header() http.Header { return c.header }

// WriteHeader records the status. Informational (1xx) statuses are sent on
// at once, with the headers set so far, and not stored.
func (c *capture) WriteHeader(code int) {
	if c.status != 0 || c.hijacked {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		copyHeader(c.w.Header(), c.header)
		c.w.WriteHeader(code)
		return
	}
	c.status = code
	// As net/http does, later changes to the headers are not sent, but
	// for trailers.
	c.wrote = c.header.Clone()
	if c.unstored != "" {
		c.w.WriteHeader(code)
	}
}

// final returns the headers of the response as net/http would send them:
// those set before WriteHeader, and the trailers (declared in Trailer, or
// with http.TrailerPrefix) with the values they have now. The caller must
// not change the result: without trailers it is the capture's own copy.
func (c *capture) final() http.Header {
	if c.wrote == nil {
		return c.header
	}
	declared := listedNames(c.wrote, "Trailer")
	if declared == nil && !hasPrefixed(c.header) {
		return c.wrote
	}
	h := c.wrote.Clone()
	for name, vals := range c.header {
		if declared[http.CanonicalHeaderKey(name)] || strings.HasPrefix(name, http.TrailerPrefix) {
			h[name] = vals
		}
	}
	return h
}

// hasPrefixed reports whether h has a trailer named with
// http.TrailerPrefix.
func hasPrefixed(h http.Header) bool {
	for name := range h {
		if strings.HasPrefix(name, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// Write keeps b, or passes it through once the response is unstored.
func (c *capture) Write(b []byte) (int, error) {
	if c.hijacked {
		return 0, http.ErrHijacked
	}
	if c.status == 0 {
		c.WriteHeader(http.StatusOK)
	}
	if c.unstored != "" {
		return c.w.Write(b)
	}
	if c.body.Len()+len(b) > c.limit {
		if err := c.passThrough("larger than the store's maximum response size"); err != nil {
			return 0, err
		}
		return c.w.Write(b)
	}
	return c.body.Write(b)
}

// passThrough sends what is kept so far to the real writer, and makes
// every later write go straight to it.
func (c *capture) passThrough(why string) error {
	if c.unstored != "" {
		return nil
	}
	c.unstored = why
	if c.status == 0 {
		c.status = http.StatusOK
	}
	copyHeader(c.w.Header(), c.header)
	c.header = c.w.Header()
	c.w.WriteHeader(c.status)
	_, err := c.w.Write(c.body.Bytes())
	c.body = bytes.Buffer{}
	return err
}

// FlushError sends the response so far to the client. A flushed response
// is being streamed, so it cannot be stored.
func (c *capture) FlushError() error {
	if c.hijacked {
		return http.ErrHijacked
	}
	if err := c.passThrough("streamed (the handler flushed it)"); err != nil {
		return err
	}
	return http.NewResponseController(c.w).Flush()
}

// Flush is FlushError for http.Flusher.
func (c *capture) Flush() { _ = c.FlushError() }

// Hijack hands the connection to the handler; the response cannot be
// stored.
func (c *capture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(c.w).Hijack()
	if err == nil {
		c.hijacked = true
		c.unstored = "hijacked by the handler"
	}
	return conn, rw, err
}

// Unwrap returns the real writer, for http.ResponseController.
func (c *capture) Unwrap() http.ResponseWriter { return c.w }

// response returns the kept response. Valid when unstored is empty.
func (c *capture) response() *response {
	status := c.status
	if status == 0 {
		status = http.StatusOK
	}
	return &response{status: status, header: storableHeader(c.final()), body: c.body.Bytes()}
}

// copyHeader sets every header of src on dst, replacing values dst had.
func copyHeader(dst, src http.Header) {
	for k, v := range src {
		dst[k] = v
	}
}
