// Package idemtest is the conformance suite every idem backend must pass,
// and the test helpers that go with it.
//
// A backend's tests call Run with a function that opens a fresh, empty store
// on the backend with the options given:
//
//	func TestConformance(t *testing.T) {
//		idemtest.Run(t, func(t *testing.T, opts *idem.Options) *idem.Store {
//			s, err := mybackend.Open(..., opts)
//			require.NoError(t, err)
//			t.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
package idemtest

import (
	"sync"
	"time"
)

// T0 is the instant a Clock starts at.
var T0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// Clock is a clock tests move by hand, for Options.Now. It is safe for
// simultaneous use by multiple goroutines. The zero value is not usable:
// make one with NewClock.
type Clock struct {
	mu sync.Mutex // protects t
	t  time.Time
}

// NewClock returns a clock standing at T0.
func NewClock() *Clock { return &Clock{t: T0} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
