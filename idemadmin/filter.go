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
	Limit     int           // at most this many records; 0: no limit
}

// DefaultLimit is the Limit of a list request whose query names none, so
// that a bare GET of a large store's records stays short.
const DefaultLimit = 100

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
	q.Set("limit", strconv.Itoa(f.Limit))
	return q
}

// ParseFilter returns the Filter that q, the query of a list request,
// names, or an error naming the parameter that is wrong. A query without
// a limit gets DefaultLimit. Parameters it does not know are ignored.
func ParseFilter(q url.Values) (Filter, error) {
	f := Filter{Prefix: q.Get("prefix"), State: q.Get("state"), Limit: DefaultLimit}
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

var errLimit = errors.New("idemadmin: limit reached")

// List calls fn with every record of s that passes f at now, in the
// backend's order, corrupt records (as CorruptRecord) included when f lets
// them through, until f.Limit records have passed or fn returns an error,
// which List returns. It streams: one record at a time is in memory.
func List(ctx context.Context, s *idem.Store, f Filter, now time.Time, fn func(*idem.Record, Record) error) error {
	if err := f.Check(); err != nil {
		return err
	}
	n := 0
	err := s.Scan(ctx, f.Prefix, func(key string, rec *idem.Record, err error) error {
		var j Record
		switch {
		case err != nil && !errors.Is(err, idem.ErrCorrupt):
			return err
		case err != nil && !f.matchCorrupt():
			return nil
		case err != nil:
			j = CorruptRecord(key, err)
		case !f.Match(rec, now):
			return nil
		default:
			j = FromRecord(rec)
		}
		if err := fn(rec, j); err != nil {
			return err
		}
		if n++; f.Limit > 0 && n >= f.Limit {
			return errLimit
		}
		return nil
	})
	if errors.Is(err, errLimit) {
		return nil
	}
	return err
}
