// Package endctx makes the context that ends a lease after the request's
// work is done: it keeps the request context's values, outlives its
// cancellation (once the card is charged, the outcome must be stored even
// if the client has gone), and is bounded by Bound. Do, idemhttp and
// idemgrpc store every outcome under one.
//
// Its timer is armed only when something waits on Done: the embedded
// store checks Err and never waits, so storing an outcome there costs no
// timer; a network client that selects on Done gets the same deadline a
// context.WithTimeout would give.
package endctx

import (
	"context"
	"sync"
	"time"
)

// Bound is how long storing an outcome may take.
const Bound = 30 * time.Second

// New returns a context with ctx's values, not canceled when ctx is, that
// ends Bound from now or when cancel is called. Call cancel when done.
func New(ctx context.Context) (context.Context, context.CancelFunc) {
	return newWithin(ctx, Bound)
}

func newWithin(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	c := &endCtx{Context: context.WithoutCancel(ctx), deadline: time.Now().Add(d)}
	return c, func() { c.end(context.Canceled) }
}

type endCtx struct {
	context.Context // the values; Done, Err and Deadline are endCtx's own
	deadline        time.Time

	mu    sync.Mutex
	err   error         // set once: Canceled or DeadlineExceeded
	done  chan struct{} // made by the first Done; closed when err is set
	timer *time.Timer   // armed by the first Done
}

func (c *endCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *endCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return c.done
	}
	c.done = make(chan struct{})
	if c.err == nil && !time.Now().Before(c.deadline) {
		c.err = context.DeadlineExceeded
	}
	if c.err != nil {
		close(c.done)
		return c.done
	}
	c.timer = time.AfterFunc(time.Until(c.deadline), func() { c.end(context.DeadlineExceeded) })
	return c.done
}

func (c *endCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && !time.Now().Before(c.deadline) {
		c.setErr(context.DeadlineExceeded)
	}
	return c.err
}

func (c *endCtx) end(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.setErr(err)
	}
}

// setErr sets err, closes done if made and stops the timer; c.mu is held
// and c.err is nil.
func (c *endCtx) setErr(err error) {
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
}

func (c *endCtx) String() string { return "idem end context" }
