package idem

import (
	"fmt"
	"time"
)

// State is the state of a stored record. The numbers are stored on disk and
// in Redis: they are never renumbered.
type State uint8

const (
	// StateInProgress means a lease holder is executing the request.
	StateInProgress State = 1
	// StateCompleted means the request finished; Response is replayed to
	// every retry.
	StateCompleted State = 2
	// StateFailed means the request finished with a failure. Response is
	// replayed to retries unless Retryable is set, in which case a later
	// Begin may run the request again.
	StateFailed State = 3
)

// String returns "in-progress", "completed" or "failed".
func (s State) String() string {
	switch s {
	case StateInProgress:
		return "in-progress"
	case StateCompleted:
		return "completed"
	case StateFailed:
		return "failed"
	default:
		return fmt.Sprintf("unknown state: %d", uint8(s))
	}
}

// ParseState returns the State whose String is s.
func ParseState(s string) (State, error) {
	for _, st := range []State{StateInProgress, StateCompleted, StateFailed} {
		if st.String() == s {
			return st, nil
		}
	}
	return 0, fmt.Errorf("idem: unknown state %q (want in-progress, completed or failed)", s)
}

// Record is what the store keeps for one key.
//
// Records returned by the store are the caller's own: they may be kept and
// modified without affecting the store.
type Record struct {
	Key         string
	State       State
	Fingerprint []byte // caller's digest of the request; a retry must match it
	Response    []byte // opaque bytes replayed to retries
	Retryable   bool   // StateFailed only: a later Begin may run the request again
	Attempts    int    // leases granted for this key so far
	Token       uint64 // fencing token of the newest lease; grows with every lease
	CreatedAt   time.Time
	UpdatedAt   time.Time
	LeaseUntil  time.Time // StateInProgress only
	ExpiresAt   time.Time

	// holder is the epoch of the open of the embedded store whose process
	// holds the lease of an in-progress record; 0 when unknown (other
	// backends, records restored from elsewhere) or finished.
	holder uint64
}

// Expired reports whether the record's life has ended at now.
func (r *Record) Expired(now time.Time) bool {
	return !now.Before(r.ExpiresAt)
}

// LeaseLapsed reports whether the record is in progress with a lease that
// has lapsed at now, so that the next Begin takes it over.
func (r *Record) LeaseLapsed(now time.Time) bool {
	return r.State == StateInProgress && !now.Before(r.LeaseUntil)
}

// Finished reports whether the record is replayed to retries: completed, or
// failed and not retryable.
func (r *Record) Finished() bool {
	return r.State == StateCompleted || (r.State == StateFailed && !r.Retryable)
}
