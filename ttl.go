package idem

import (
	"context"
	"math"
	"time"
)

// Default lifetimes. Options fields left zero take these.
const (
	DefaultLeaseTTL     = 30 * time.Second
	DefaultCompletedTTL = 24 * time.Hour
	DefaultFailedTTL    = 24 * time.Hour
	DefaultGCInterval   = 5 * time.Minute
)

type ttlKey struct{}

type callTTL struct {
	record time.Duration // completed and failed records, and an in-progress record's fingerprint
	lease  time.Duration
}

// WithTTL returns a context under which Begin, Do, Complete and Fail keep the
// record for d instead of Options.CompletedTTL and Options.FailedTTL: a
// payment endpoint keeps its records 7 days while the store's default stays
// 24 hours. A lease remembers the lifetime it was begun with, so Complete and
// Fail need not be given the same context; given it with another d, they
// keep the record for that d instead. d <= 0 means the store's default.
func WithTTL(ctx context.Context, d time.Duration) context.Context {
	t, _ := ctx.Value(ttlKey{}).(callTTL)
	t.record = d
	return context.WithValue(ctx, ttlKey{}, t)
}

// WithLeaseTTL returns a context under which Begin and Do grant leases of d
// instead of Options.LeaseTTL, for requests known to run long. d <= 0 means
// the store's default.
func WithLeaseTTL(ctx context.Context, d time.Duration) context.Context {
	t, _ := ctx.Value(ttlKey{}).(callTTL)
	t.lease = d
	return context.WithValue(ctx, ttlKey{}, t)
}

// policy is the set of lifetimes that applies to one lease.
type policy struct {
	lease     time.Duration
	completed time.Duration
	failed    time.Duration
}

// policyFor returns the lifetimes for a call with ctx.
func (o *Options) policyFor(ctx context.Context) policy {
	p := policy{lease: o.LeaseTTL, completed: o.CompletedTTL, failed: o.FailedTTL}
	if t, ok := ctx.Value(ttlKey{}).(callTTL); ok {
		if t.record > 0 {
			p.completed, p.failed = t.record, t.record
		}
		if t.lease > 0 {
			p.lease = t.lease
		}
	}
	return p
}

// leaseRecord sets the lease and expiry of an in-progress record at now.
// The record outlives its lease: it keeps its fingerprint for at least the
// completed lifetime, so a key reused after a crash is still refused.
func (p policy) leaseRecord(r *Record, now time.Time) {
	r.LeaseUntil = now.Add(p.lease)
	r.ExpiresAt = latest(now.Add(p.completed), r.LeaseUntil)
}

// finish ends the in-progress record r at now with an outcome: state st
// (completed or failed), response, and whether a failure may run again. The
// record then lives the completed or failed lifetime from now.
func (p policy) finish(r *Record, st State, response []byte, retryable bool, now time.Time) {
	d := p.completed
	if st == StateFailed {
		d = p.failed
	}
	r.State = st
	r.Response = response
	r.Retryable = retryable
	r.holder = 0
	r.UpdatedAt = now
	r.LeaseUntil = time.Time{}
	r.ExpiresAt = now.Add(d)
}

// physicalExpiry returns when a backend may drop a record whose logical life
// ends at expires, as judged by the store's clock at now. Backends expire
// entries by the real clock, so the remaining life is carried over to the
// real clock, plus a second for the backends' own rounding (Redis counts
// milliseconds; the embedded engine rounds up to whole seconds itself):
// never shorter than the logical life.
func physicalExpiry(expires, now, realNow time.Time) time.Time {
	remaining := min(max(expires.Sub(now), 0), math.MaxInt64-time.Second)
	return realNow.Add(remaining + time.Second)
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
