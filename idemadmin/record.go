package idemadmin

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
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
	switch {
	case j.Attempts < 0 || j.Attempts > math.MaxInt32:
		return nil, fmt.Errorf("key %q: attempts %d is out of range (0 to %d)", j.Key, j.Attempts, math.MaxInt32)
	case j.Token > idem.MaxToken:
		return nil, fmt.Errorf("key %q: token %d is larger than the largest fencing token, %d (idem.MaxToken)", j.Key, j.Token, uint64(idem.MaxToken))
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
