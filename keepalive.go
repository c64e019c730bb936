package idem

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"github.com/idemdb/idem/internal/endctx"
	"sync"
	"time"
)

// KeepAlive renews l while the request runs: every third of the lease's
// length, it extends the lease by its full length, until stop is called.
// It returns the context to run the request under: ctx, canceled also when
// the lease is lost (another caller took the key over, or the store was
// closed), with an error wrapping ErrLeaseLost as its cause. It carries
// the lease's key for KeyFrom and SubKey.
//
// Renewal outlives ctx: when the caller goes away (a client disconnects,
// ctx is canceled), the request's own context ends, but the lease is
// renewed until stop is called. A request past its side effect may still
// be finishing, and a lapsed lease would let a retry run it a second time.
// So always call stop, once the request has returned and before ending the
// lease; stop waits for a renewal in flight and is safe to call more than
// once.
//
// Do, the idemhttp middleware and the idemgrpc interceptor all renew their
// leases through KeepAlive. Renewals are scheduled on one timer per store,
// not a goroutine and a timer per lease: a request that ends within a
// third of its lease costs a heap push and a removal.
func (l *Lease) KeepAlive(ctx context.Context) (run context.Context, stop func()) {
	run, cancel := context.WithCancelCause(context.WithValue(ctx, keyCtx{}, l.key))
	k := &keepAlive{l: l, ctx: context.WithoutCancel(ctx), cancel: cancel, index: -1}
	l.s.keeper.add(k, time.Now().Add(l.renewEvery()))
	return run, func() {
		l.s.keeper.remove(k)
		cancel(nil)
	}
}

// renewEvery is the renewal period of l: a third of its length.
func (l *Lease) renewEvery() time.Duration {
	return max(l.pol.lease/3, time.Millisecond)
}

// keepAlive is one lease being renewed.
type keepAlive struct {
	l      *Lease
	ctx    context.Context // the caller's values, without its cancellation
	cancel context.CancelCauseFunc

	// Guarded by keeper.mu.
	due     time.Time // next renewal, by the real clock
	index   int       // in keeper.h; -1 when not scheduled
	running bool      // a renewal is in flight
	stopped bool
}

// keeper schedules the renewals of a store's leases with one timer, set
// for the earliest renewal due; it fires on a goroutine of its own, which
// starts the due renewals and sets the timer for the next. Adding a lease
// whose renewal is due after the timer (nearly always: leases of one length
// are added in order) costs a heap push under the mutex and nothing else.
type keeper struct {
	mu     sync.Mutex
	cond   *sync.Cond // signalled when a renewal ends
	h      keepHeap
	timer  *time.Timer // fires at next; nil until the first lease
	next   time.Time   // when the timer fires; zero when it is not set
	closed bool        // the store is closed: no more renewals
	log    func(msg string, args ...any)
}

func (k *keeper) init(warn func(msg string, args ...any)) {
	k.cond = sync.NewCond(&k.mu)
	k.log = warn
}

func (k *keeper) add(ka *keepAlive, due time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ka.due = due
	heap.Push(&k.h, ka)
	k.schedule(due)
}

// schedule makes the timer fire by due. k.mu is held.
func (k *keeper) schedule(due time.Time) {
	if k.closed || (!k.next.IsZero() && !due.Before(k.next)) {
		return
	}
	k.next = due
	d := max(time.Until(due), 0)
	if k.timer == nil {
		k.timer = time.AfterFunc(d, k.fire)
	} else {
		k.timer.Reset(d)
	}
}

// remove unschedules ka and waits for its renewal in flight, if any.
func (k *keeper) remove(ka *keepAlive) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ka.stopped = true
	if ka.index >= 0 {
		heap.Remove(&k.h, ka.index)
	}
	for ka.running {
		k.cond.Wait()
	}
}

// fire starts the renewals that are due and sets the timer for the next.
func (k *keeper) fire() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.next = time.Time{}
	if k.closed {
		return
	}
	now := time.Now()
	for len(k.h) > 0 && !k.h[0].due.After(now) {
		ka := heap.Pop(&k.h).(*keepAlive)
		ka.running = true
		go k.renew(ka)
	}
	if len(k.h) > 0 {
		k.schedule(k.h[0].due)
	}
}

// close stops the renewals: leases still scheduled are ended by their
// holders, whose next step gets ErrClosed.
func (k *keeper) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	if k.timer != nil {
		k.timer.Stop()
	}
	for len(k.h) > 0 {
		heap.Pop(&k.h)
	}
}

// renew extends ka's lease once and schedules the next renewal, or cancels
// the request when the lease is lost.
func (k *keeper) renew(ka *keepAlive) {
	l := ka.l
	ctx, cancel := context.WithTimeout(ka.ctx, l.pol.lease)
	err := l.Extend(ctx, l.pol.lease)
	cancel()
	lost := errors.Is(err, ErrLeaseLost) || errors.Is(err, ErrClosed)
	if lost {
		ka.cancel(fmt.Errorf("idem: renew %q: %w (%v)", l.key, ErrLeaseLost, err))
	} else if err != nil {
		k.log("idem: lease renewal failed", "key", l.key, "err", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	ka.running = false
	k.cond.Broadcast()
	if lost || ka.stopped || k.closed {
		return
	}
	ka.due = time.Now().Add(l.renewEvery())
	if err != nil {
		// Try again sooner: the lease has two thirds of its life left
		// at most, and one failed renewal must not lose it.
		ka.due = time.Now().Add(l.renewEvery() / 4)
	}
	heap.Push(&k.h, ka)
	k.schedule(ka.due)
}

// keepHeap orders leases by their next renewal.
type keepHeap []*keepAlive

func (h keepHeap) Len() int           { return len(h) }
func (h keepHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h keepHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *keepHeap) Push(x any) {
	ka := x.(*keepAlive)
	ka.index = len(*h)
	*h = append(*h, ka)
}
func (h *keepHeap) Pop() any {
	old := *h
	ka := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	ka.index = -1
	return ka
}

// Run runs fn under KeepAlive: fn gets the context KeepAlive returns, and
// the renewal stops when fn returns, before Run does. If fn panics, or its
// goroutine exits (runtime.Goexit), Run stops the renewal, ends the lease
// as a failure that may run again (no response; the record keeps its
// fingerprint, so a retry with the same request runs it and another
// request under the key is refused), and lets the panic or exit go on.
//
// Do, the idemhttp middleware and the idemgrpc interceptor run their
// requests through it; the caller ends the lease by fn's outcome after Run
// returns.
func (l *Lease) Run(ctx context.Context, fn func(ctx context.Context)) {
	run, stop := l.KeepAlive(ctx)
	returned := false
	defer func() {
		if returned {
			return
		}
		p := recover() // nil for runtime.Goexit
		stop()
		endCtx, cancel := endctx.New(ctx)
		defer cancel()
		if err := l.Fail(endCtx, nil, true); err != nil {
			l.s.log.Error("idem: ending the lease of a request that panicked", "key", l.key, "err", err)
		}
		if p != nil {
			panic(p)
		}
	}()
	fn(run)
	returned = true
	stop()
}
