package idemadmin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/idemdb/idem"
)

// Client calls the endpoints Handler serves. Its methods answer as the
// Store's do: Get with an error wrapping idem.ErrNotFound or
// idem.ErrCorrupt, and the repairs, named as on the Store, with an
// *idem.ChangedError when the record is not the one shown, so that a tool
// can work on a store or on a running server's endpoint alike. Its zero
// value is not usable; NewClient makes one. It is safe for simultaneous
// use by multiple goroutines.
type Client struct {
	addr string // as given, for messages
	base string // the endpoint's URL, without a trailing slash
	hc   *http.Client
}

// NewClient returns a Client for the admin endpoint at addr, a host:port
// or a URL. A nil httpClient means http.DefaultClient. Each call is bounded
// by its context only.
func NewClient(addr string, httpClient *http.Client) *Client {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	return &Client{addr: addr, base: strings.TrimSuffix(base, "/"), hc: httpClient}
}

// Get returns key's record, an error wrapping idem.ErrNotFound when there
// is none, or one wrapping idem.ErrCorrupt when it cannot be decoded.
func (c *Client) Get(ctx context.Context, key string) (*idem.Record, error) {
	var j Record
	err := c.call(ctx, http.MethodGet, "/admin/records/"+keyPath(key), nil, func(r io.Reader) error {
		return json.NewDecoder(r).Decode(&j)
	})
	if err != nil {
		return nil, err
	}
	if j.State == StateCorrupt {
		return nil, fmt.Errorf("%w (from %s): %s", idem.ErrCorrupt, c.addr, j.Corrupt)
	}
	return j.ToRecord()
}

// List calls fn with every record that passes f, in the store's order,
// corrupt ones as CorruptRecord, until the list ends or fn returns an
// error, which List returns as it is. It asks for pages of at most
// MaxLimit records, each after the last key of the page before, until
// f.Limit records have passed (0: all of them). A list that breaks off is
// an error, and so is one longer than a page on a store whose scan is in
// no key order (Redis), which cannot go on after a key: narrow f instead.
func (c *Client) List(ctx context.Context, f Filter, fn func(Record) error) error {
	if err := f.Check(); err != nil {
		return err
	}
	left := f.Limit // records still wanted; 0: all
	for passed := 0; ; {
		page := f
		page.Limit = MaxLimit
		if left > 0 {
			page.Limit = min(left, MaxLimit)
		}
		n, end, err := c.listPage(ctx, page, fn)
		passed += n
		if err != nil {
			return err
		}
		if left > 0 {
			if left -= n; left == 0 {
				return nil
			}
		}
		switch {
		case end == nil:
			return nil
		case end.Next == "":
			return fmt.Errorf("admin endpoint %s: the list stopped after %d records, and this store's scan is in no key order (Redis), "+
				"so it cannot go on after a key: narrow it (a prefix, a state, stale or older-than), or list the store itself", c.addr, passed)
		}
		f.After = end.Next
	}
}

// listPage calls fn with the records of one page of the list f selects,
// and returns how many there were and the page's ListEnd, nil at the end
// of the list.
func (c *Client) listPage(ctx context.Context, f Filter, fn func(Record) error) (int, *ListEnd, error) {
	var fnErr error
	var end *ListEnd
	n := 0
	err := c.call(ctx, http.MethodGet, "/admin/records?"+f.Encode().Encode(), nil, func(r io.Reader) error {
		dec := json.NewDecoder(r)
		for dec.More() {
			var line struct {
				Record
				Error     string `json:"error"`
				Truncated bool   `json:"truncated"`
				Next      string `json:"next"`
			}
			if err := dec.Decode(&line); err != nil {
				return err
			}
			switch {
			case line.Error != "":
				return fmt.Errorf("the list broke off: %s", line.Error)
			case end != nil:
				return errors.New("a record after the end of the page")
			case line.Truncated:
				end = &ListEnd{Truncated: true, Next: line.Next}
				continue
			}
			n++
			if fnErr = fn(line.Record); fnErr != nil {
				return fnErr
			}
		}
		// More is also false when the stream broke off between two
		// values: only a clean end of the body is io.EOF.
		if tok, err := dec.Token(); err != io.EOF {
			if err == nil {
				err = fmt.Errorf("unexpected %v", tok)
			}
			return fmt.Errorf("the list broke off: %w", err)
		}
		return nil
	})
	if fnErr != nil {
		return n, nil, fnErr
	}
	if err == nil && end != nil && end.Next != "" && end.Next <= f.After {
		err = fmt.Errorf("admin endpoint %s: the page after %q ends at %q, which does not go on", c.addr, f.After, end.Next)
	}
	return n, end, err
}

// Stats returns the census of the records whose keys begin with prefix,
// with the store's counters.
func (c *Client) Stats(ctx context.Context, prefix string) (Stats, error) {
	var st Stats
	err := c.call(ctx, http.MethodGet, "/admin/stats?"+url.Values{"prefix": {prefix}}.Encode(), nil, func(r io.Reader) error {
		return json.NewDecoder(r).Decode(&st)
	})
	return st, err
}

// ForceRelease asks the server to release the lease with token on key's
// in-progress record (idem.Store.ForceRelease).
func (c *Client) ForceRelease(ctx context.Context, key string, token uint64) error {
	return c.repair(ctx, "release", key, RepairRequest{Token: token, State: idem.StateInProgress.String()})
}

// ForceFail asks the server to end the lease with token on key's
// in-progress record as failed (idem.Store.ForceFail).
func (c *Client) ForceFail(ctx context.Context, key string, token uint64, response []byte, retryable bool) error {
	return c.repair(ctx, "fail", key, RepairRequest{Token: token, State: idem.StateInProgress.String(), Response: response, Retryable: retryable})
}

// ForceDelete asks the server to delete key's record provided it is still
// the record seen; seen == nil deletes a record that cannot be decoded
// (idem.Store.ForceDelete).
func (c *Client) ForceDelete(ctx context.Context, key string, seen *idem.Record) error {
	if seen == nil {
		return c.repair(ctx, "delete", key, RepairRequest{Corrupt: true})
	}
	j := FromRecord(seen)
	return c.repair(ctx, "delete", key, RepairRequest{Token: seen.Token, State: j.State, CreatedAt: j.CreatedAt})
}

func (c *Client) repair(ctx context.Context, op, key string, req RepairRequest) error {
	err := c.call(ctx, http.MethodPost, "/admin/"+op+"/"+keyPath(key), req, func(r io.Reader) error {
		_, err := io.Copy(io.Discard, r)
		return err
	})
	var changed *idem.ChangedError
	if errors.As(err, &changed) {
		changed.Key = key
	}
	return err
}

// call sends method path (with body as JSON when not nil) and hands a 200
// answer's body to read. Any other answer is an error carrying the
// endpoint's message, and wrapping what it stands for: idem.ErrNotFound
// for a 404, an *idem.ChangedError for a refused repair.
func (c *Client) call(ctx context.Context, method, path string, body any, read func(io.Reader) error) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("admin endpoint %s: %w", c.addr, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin endpoint: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return c.answerError(resp)
	}
	if err := read(resp.Body); err != nil {
		return fmt.Errorf("admin endpoint %s: bad answer: %w", c.addr, err)
	}
	return nil
}

// answerError returns the error an answer other than 200 stands for.
func (c *Client) answerError(resp *http.Response) error {
	var p Problem
	_ = json.NewDecoder(resp.Body).Decode(&p)
	switch {
	case resp.StatusCode == http.StatusNotFound && p.Error != "":
		return &answerError{msg: fmt.Sprintf("%s (from %s)", p.Error, c.addr), err: idem.ErrNotFound}
	case resp.StatusCode == http.StatusConflict && p.Want != "":
		changed := &idem.ChangedError{Want: p.Want}
		if p.Stored != nil && p.Stored.State != StateCorrupt {
			changed.Stored, _ = p.Stored.ToRecord()
		}
		return &answerError{msg: fmt.Sprintf("%s (from %s)", p.Error, c.addr), err: changed}
	case resp.StatusCode == http.StatusConflict:
		return fmt.Errorf("%s (from %s)", p.Error, c.addr)
	}
	return fmt.Errorf("admin endpoint %s: %s: %s", c.addr, resp.Status, p.Error)
}

// answerError is an answer of the admin endpoint that stands for an idem
// error: its message is the endpoint's, and it wraps err.
type answerError struct {
	msg string
	err error
}

func (e *answerError) Error() string { return e.msg }
func (e *answerError) Unwrap() error { return e.err }

// keyPath returns key as one segment of an admin endpoint's URL path. The
// keys "." and ".." are escaped in full: as they are, the server's path
// cleaning would remove them.
func keyPath(key string) string {
	if key == "." || key == ".." {
		return strings.Repeat("%2E", len(key))
	}
	return url.PathEscape(key)
}
