package idemadmin

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/idemdb/idem"
)

// Record is a record as operators' tools exchange it: the admin endpoint's
// answers, and the idem command's get -json, list -json, export and
// import. Times are RFC 3339 in UTC, the fingerprint is hex and the
// response base64.
type Record struct {
	Key         string     `json:"key"`
	State       string     `json:"state,omitempty"`
	Fingerprint string     `json:"fingerprint,omitempty"`
	Response    []byte     `json:"response,omitempty"`
	Retryable   bool       `json:"retryable,omitempty"`
	Attempts    int        `json:"attempts,omitempty"`
	Token       uint64     `json:"token,omitempty"`
	CreatedAt   *time.Time `json:"created_at,omitempty"`
	UpdatedAt   *time.Time `json:"updated_at,omitempty"`
	LeaseUntil  *time.Time `json:"lease_until,omitempty"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	// Corrupt holds the decoding error of a record that cannot be read
	// (State is then "corrupt" and the other fields are empty).
	Corrupt string `json:"corrupt,omitempty"`
}

// MarshalJSON writes j with an empty response as "" and a missing one left
// out, so that export and import keep the difference.
func (j Record) MarshalJSON() ([]byte, error) {
	type plain Record // without this method
	out := struct {
		plain
		Response *[]byte `json:"response,omitempty"`
	}{plain: plain(j)}
	if j.Response != nil {
		out.Response = &j.Response
	}
	return json.Marshal(out)
}

// StateCorrupt is the State of a Record that could not be decoded.
const StateCorrupt = "corrupt"

// FromRecord returns r in the exchange form.
func FromRecord(r *idem.Record) Record {
	return Record{
		Key: r.Key, State: r.State.String(), Fingerprint: hex.EncodeToString(r.Fingerprint),
		Response: r.Response, Retryable: r.Retryable, Attempts: r.Attempts, Token: r.Token,
		CreatedAt: timePtr(r.CreatedAt), UpdatedAt: timePtr(r.UpdatedAt),
		LeaseUntil: timePtr(r.LeaseUntil), ExpiresAt: timePtr(r.ExpiresAt),
	}
}

// CorruptRecord returns the exchange form of key's record that could not
// be decoded, with err, the decoding error.
func CorruptRecord(key string, err error) Record {
	return Record{Key: key, State: StateCorrupt, Corrupt: err.Error()}
}

// ToRecord returns the record j describes, or an error naming the field
// that is wrong.
func (j *Record) ToRecord() (*idem.Record, error) {
	if j.Key == "" {
		return nil, errors.New("no key")
	}
	if j.Corrupt != "" {
		return nil, fmt.Errorf("key %q: exported as corrupt (%s)", j.Key, j.Corrupt)
	}
	st, err := idem.ParseState(j.State)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", j.Key, err)
	}
	fp, err := hex.DecodeString(j.Fingerprint)
	if err != nil {
		return nil, fmt.Errorf("key %q: fingerprint is not hex: %w", j.Key, err)
	}
	return &idem.Record{
		Key: j.Key, State: st, Fingerprint: fp, Response: j.Response, Retryable: j.Retryable,
		Attempts: j.Attempts, Token: j.Token, CreatedAt: timeVal(j.CreatedAt), UpdatedAt: timeVal(j.UpdatedAt),
		LeaseUntil: timeVal(j.LeaseUntil), ExpiresAt: timeVal(j.ExpiresAt),
	}, nil
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func timeVal(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// Filter selects records for List. The zero Filter selects every record,
// corrupt ones included.
type Filter struct {
	Prefix    string        // keys that begin with Prefix (a scope)
	State     string        // "in-progress", "completed", "failed" or "corrupt"; "" for all
	Stale     bool          // in-progress records whose lease has lapsed
	OlderThan time.Duration // records created more than this long ago
}

// Check returns an error naming what is wrong with f, if anything.
func (f *Filter) Check() error {
	if f.OlderThan < 0 {
		return fmt.Errorf("older-than must not be negative (got %v)", f.OlderThan)
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
// now.
func (f *Filter) Match(rec *idem.Record, now time.Time) bool {
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
func (f *Filter) matchCorrupt() bool {
	return f.State == StateCorrupt || (f.State == "" && !f.Stale && f.OlderThan == 0)
}

// List calls fn with every record of s that passes f at now, in the
// backend's order, corrupt records (as CorruptRecord) included when f lets
// them through, until fn returns an error, which List returns. It streams:
// one record at a time is in memory.
func List(ctx context.Context, s *idem.Store, f Filter, now time.Time, fn func(*idem.Record, Record) error) error {
	if err := f.Check(); err != nil {
		return err
	}
	return s.Scan(ctx, f.Prefix, func(key string, rec *idem.Record, err error) error {
		switch {
		case err != nil && !errors.Is(err, idem.ErrCorrupt):
			return err
		case err != nil:
			if !f.matchCorrupt() {
				return nil
			}
			return fn(nil, CorruptRecord(key, err))
		case !f.Match(rec, now):
			return nil
		}
		return fn(rec, FromRecord(rec))
	})
}

// Stats is a census of a store: its records by state, the corrupt ones,
// the stale leases and the oldest in-progress record, with its disk use
// and, from a running store, its counters.
type Stats struct {
	Records                 map[string]int `json:"records"`
	Corrupt                 int            `json:"corrupt"`
	StaleLeases             int            `json:"stale_leases"`
	OldestInProgressSeconds float64        `json:"oldest_in_progress_seconds"`
	OldestInProgressKey     string         `json:"oldest_in_progress_key,omitempty"`
	DiskBytes               int64          `json:"disk_bytes"`
	// Counters are the store's Stats since it was opened: set by the admin
	// endpoint of a running store.
	Counters *idem.Stats `json:"counters,omitempty"`
}

// TakeStats takes the census of the records of s whose keys begin with
// prefix (Store.Census) and returns it with the disk use when the backend
// reports it.
func TakeStats(ctx context.Context, s *idem.Store, prefix string) (Stats, error) {
	c, err := s.Census(ctx, prefix, 0)
	if err != nil {
		return Stats{}, err
	}
	st := Stats{
		Records:     map[string]int{},
		Corrupt:     c.Corrupt,
		StaleLeases: c.StaleLeases,
	}
	for _, state := range []idem.State{idem.StateInProgress, idem.StateCompleted, idem.StateFailed} {
		st.Records[state.String()] = c.Records[state]
	}
	if c.OldestKey != "" {
		st.OldestInProgressSeconds = c.OldestInProgress.Seconds()
		st.OldestInProgressKey = c.OldestKey
	}
	if du := s.DiskUsage(); du >= 0 {
		st.DiskBytes = du
	}
	return st, nil
}
