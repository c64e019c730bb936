package idem

import (
	"errors"
	"time"
)

// Observer is told the outcome and duration of store operations, for
// latency metrics (package idemprom implements it for Prometheus). Set it
// with Options.Observer. Observe is called on the caller's goroutine after
// each operation, so it must be fast and safe for simultaneous use by
// multiple goroutines.
//
// op is "begin", "get", or the lease step: "complete", "fail", "release",
// "extend" (and "force-release", "force-fail", "force-delete" for the
// operator API).
// outcome is one of:
//
//   - begin: "lease", "replay", "in-progress", "mismatch", "error"
//   - get: "hit", "miss", "error"
//   - lease steps: "ok", "lease-lost", "error"
//
// d is measured by the real clock, not Options.Now.
type Observer interface {
	Observe(op, outcome string, d time.Duration)
}

// observeBegin reports one Begin to the observer.
func (s *Store) observeBegin(start time.Time, l *Lease, err error) {
	outcome := "error"
	switch {
	case l != nil:
		outcome = "lease"
	case err == nil:
		outcome = "replay"
	case errors.Is(err, ErrInProgress):
		outcome = "in-progress"
	case errors.Is(err, ErrFingerprintMismatch):
		outcome = "mismatch"
	}
	s.opts.Observer.Observe("begin", outcome, time.Since(start))
}

// observeGet reports one Get to the observer.
func (s *Store) observeGet(start time.Time, err error) {
	outcome := "error"
	switch {
	case err == nil:
		outcome = "hit"
	case errors.Is(err, ErrNotFound):
		outcome = "miss"
	}
	s.opts.Observer.Observe("get", outcome, time.Since(start))
}

// observeStep reports one fenced lease step to the observer.
func (s *Store) observeStep(op string, start time.Time, err error) {
	outcome := "error"
	switch {
	case err == nil:
		outcome = "ok"
	case errors.Is(err, ErrLeaseLost):
		outcome = "lease-lost"
	}
	s.opts.Observer.Observe(op, outcome, time.Since(start))
}
