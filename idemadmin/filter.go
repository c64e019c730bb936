package idemadmin

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/idemdb/idem"
)

// Filter selects records for List, Client.List and the list endpoint,
// whose query is its Encode. The zero Filter selects every record, corrupt
// ones included, with no limit.
type Filter struct {
	Prefix    string        // keys that begin with Prefix (a scope)
	State     string        // "in-progress", "completed", "failed" or "corrupt"; "" for all
	Stale     bool          // in-progress records whose lease has lapsed
	OlderThan time.Duration // records created more than this long ago
	Limit     int           // at most this many records; 0: no limit (the endpoint: 1 to MaxLimit a page)
	// After continues a list: only keys greater than After, byte by byte.
	// It is the Next of the page before (ListEnd), and needs a store that
	// scans in key order (the embedded store, Postgres; not Redis).
	After string
}

// DefaultLimit is the Limit of a list request whose query names none, so
// that a bare GET of a large store's records stays short.
const DefaultLimit = 100

// MaxLimit is the largest page the list endpoint serves: a request for
// more (or for limit=0, no limit) is refused, and a list goes on from the
// Next of the page's last line (ListEnd), as Client.List does.
const MaxLimit = 10_000

// ErrNoKeyOrder is returned by List for a Filter with After when the
// store's scan turns out not to be in key order (Redis): which keys come
// after After cannot be told.
var ErrNoKeyOrder = errors.New("idemadmin: this store's scan is in no key order (Redis): a list cannot go on after a key; narrow it with a prefix, a state, stale or older-than instead")

// Encode returns f as the query of a list request; ParseFilter reads it
// back. Limit is always written, 0 included, since a query without it
// means DefaultLimit.
func (f Filter) Encode() url.Values {
	q := url.Values{}
	if f.Prefix != "" {
		q.Set("prefix", f.Prefix)
	}
	if f.State != "" {
		q.Set("state", f.State)
	}
	if f.Stale {
		q.Set("stale", "true")
	}
	if f.OlderThan != 0 {
		q.Set("older-than", f.OlderThan.String())
	}
	if f.After != "" {
		q.Set("after", f.After)
	}
	q.Set("limit", strconv.Itoa(f.Limit))
	return q
}

// ParseFilter returns the Filter that q, the query of a list request,
// names, or an error naming the parameter that is wrong. A query without
// a limit gets DefaultLimit. Parameters it does not know are ignored.
func ParseFilter(q url.Values) (Filter, error) {
	f := Filter{Prefix: q.Get("prefix"), State: q.Get("state"), After: q.Get("after"), Limit: DefaultLimit}
	var err error
	if v := q.Get("stale"); v != "" {
		if f.Stale, err = strconv.ParseBool(v); err != nil {
			return Filter{}, fmt.Errorf("stale=%q: want true or false", v)
		}
	}
	if v := q.Get("older-than"); v != "" {
		if f.OlderThan, err = time.ParseDuration(v); err != nil {
			return Filter{}, fmt.Errorf("older-than=%q: want a duration such as 10m", v)
		}
	}
	if v := q.Get("limit"); v != "" {
		if f.Limit, err = strconv.Atoi(v); err != nil || f.Limit < 0 {
			return Filter{}, fmt.Errorf("limit=%q: want a count, 0 for no limit", v)
		}
	}
	return f, f.Check()
}

// Check returns an error naming what is wrong with f, if anything.
func (f Filter) Check() error {
	if f.OlderThan < 0 {
		return fmt.Errorf("older-than must not be negative (got %v)", f.OlderThan)
	}
	if f.Limit < 0 {
		return fmt.Errorf("limit must not be negative (got %d)", f.Limit)
	}
	if f.State == "" || f.State == StateCorrupt {
		return nil
	}
	if _, err := idem.ParseState(f.State); err != nil {
		return fmt.Errorf("state: %w (or corrupt)", err)
	}
	return nil
}

// Match reports whether rec, a record that could be decoded, passes f at
// now. The limit is List's to apply.
func (f Filter) Match(rec *idem.Record, now time.Time) bool {
	switch {
	case f.State == StateCorrupt:
		return false
	case f.State != "" && rec.State.String() != f.State:
		return false
	case f.Stale && !rec.LeaseLapsed(now):
		return false
	case f.OlderThan > 0 && now.Sub(rec.CreatedAt) < f.OlderThan:
		return false
	}
	return true
}

// matchCorrupt reports whether a record that cannot be decoded passes f:
// it has no state, lease or age to match, so only a filter on nothing but
// the prefix, or on the corrupt state, lets it through.
func (f Filter) matchCorrupt() bool {
	return f.State == StateCorrupt || (f.State == "" && !f.Stale && f.OlderThan == 0)
}

// List calls fn with every record of s that passes f at now, in the
// backend's order, corrupt records (as CorruptRecord) included when f lets
// them through, until f.Limit records have passed or fn returns an error,
// which List returns. It streams: one record at a time is in memory. With
// f.After, it skips the keys up to After; on a store whose scan is in no
// key order it returns an error wrapping ErrNoKeyOrder instead.
func List(ctx context.Context, s *idem.Store, f Filter, now time.Time, fn func(*idem.Record, Record) error) error {
	_, err := list(ctx, s, f, now, 0, nil, fn)
	return err
}

// ListEnd is the last line of a page of the list endpoint that stopped
// before the end of the list: at its limit, after reading 100 000
// records (a filter few pass), or after writing 32 MiB (large
// responses). Next is the After of the next page: the last key the page
// read. It is "" when the store's scan is in
// no key order (Redis), which no After can continue: narrow the filter
// instead.
type ListEnd struct {
	Truncated bool   `json:"truncated"` // always true: more records may pass the filter
	Next      string `json:"next,omitempty"`
}

// pageScan bounds the records one page of the list endpoint reads (past
// its After): a filter that few records pass ends its page early, with a
// ListEnd to go on from, rather than scan the whole store in one request.
var pageScan = 100_000

// orderEvidence is how many keys in a row a page reads in key order
// before it trusts the store to scan in key order, and hands out a Next:
// a store whose scan is in no order (Redis) shows it long before.
const orderEvidence = 256

var (
	errLimit     = errors.New("idemadmin: limit reached")
	errUnordered = errors.New("idemadmin: scan in no key order")
)

// list is List, and with budget > 0 one page of the list endpoint: it
// reads at most budget records past f.After, stops early too once full
// reports true, and when it stops before the end of the list (at
// f.Limit, budget or full), it returns the ListEnd to go on from. To know
// that more records pass, and that the store scans in key order, it
// reads on a little past the page (orderEvidence keys).
func list(ctx context.Context, s *idem.Store, f Filter, now time.Time, budget int, full func() bool,
	fn func(*idem.Record, Record) error) (*ListEnd, error) {
	if err := f.Check(); err != nil {
		return nil, err
	}
	var (
		prev    string
		inOrder int // keys read in key order, in a row from the first
		ordered = true
		n, read int  // records passed to fn; records read past After
		stopped bool // the page is full or its budget spent: reading on past it
		ahead   int  // keys read past the page
		more    bool // a record past the page passes f, or may
		next    string
	)
	err := s.Scan(ctx, f.Prefix, func(key string, rec *idem.Record, err error) error {
		if err != nil && !errors.Is(err, idem.ErrCorrupt) {
			return err
		}
		if inOrder > 0 && key <= prev {
			ordered = false
		}
		if prev = key; ordered {
			inOrder++
		}
		if f.After != "" {
			if !ordered {
				return ErrNoKeyOrder
			}
			if key <= f.After {
				return nil
			}
		}
		var pass bool
		if err != nil {
			pass = f.matchCorrupt()
		} else {
			pass = f.Match(rec, now)
		}
		if stopped {
			if !ordered {
				return errUnordered
			}
			ahead++
			more = more || pass
			if ahead >= orderEvidence || (more && inOrder >= orderEvidence) {
				more = true // or not known: the next page tells
				return errLimit
			}
			return nil
		}
		read++
		if pass {
			var j Record
			if err != nil {
				j = CorruptRecord(key, err)
			} else {
				j = FromRecord(rec)
			}
			if err := fn(rec, j); err != nil {
				return err
			}
			n++
		}
		atLimit := f.Limit > 0 && n >= f.Limit
		switch {
		case atLimit && budget <= 0:
			return errLimit // List: nothing past the limit matters
		case atLimit:
			stopped, next = true, key
		case budget > 0 && (read >= budget || (full != nil && full())):
			stopped, next, more = true, key, true
		}
		return nil
	})
	switch {
	case errors.Is(err, errLimit) && !stopped:
		return nil, nil
	case errors.Is(err, errUnordered):
		return &ListEnd{Truncated: true}, nil
	case errors.Is(err, ErrNoKeyOrder):
		return nil, ErrNoKeyOrder
	case err != nil && !errors.Is(err, errLimit):
		return nil, err
	case !more:
		return nil, nil
	case ordered:
		return &ListEnd{Truncated: true, Next: next}, nil
	}
	return &ListEnd{Truncated: true}, nil
}
