package endctx

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type key struct{}

// The end context keeps the request's values and outlives its
// cancellation.
func TestOutlivesRequest(t *testing.T) {
	req, cancelReq := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	ctx, cancel := New(req)
	defer cancel()
	cancelReq()
	assert.NoError(t, ctx.Err())
	assert.Equal(t, "v", ctx.Value(key{}))
	dl, ok := ctx.Deadline()
	require.True(t, ok)
	assert.WithinDuration(t, time.Now().Add(Bound), dl, time.Second)
	select {
	case <-ctx.Done():
		t.Fatal("done after the request ended")
	default:
	}
}

// cancel ends it, for Err and for a Done asked before or after.
func TestCancel(t *testing.T) {
	for _, doneFirst := range []bool{true, false} {
		ctx, cancel := New(context.Background())
		var done <-chan struct{}
		if doneFirst {
			done = ctx.Done()
		}
		cancel()
		cancel() // twice is harmless
		if !doneFirst {
			done = ctx.Done()
		}
		<-done
		assert.ErrorIs(t, ctx.Err(), context.Canceled)
		assert.ErrorIs(t, context.Cause(ctx), context.Canceled)
	}
}

// The deadline ends it: Err says so without anyone waiting, Done closes
// at the deadline when asked before it and at once when asked after, and
// a context derived from it ends with it.
func TestDeadline(t *testing.T) {
	ctx, cancel := newWithin(context.Background(), 50*time.Millisecond)
	defer cancel()
	child, cancelChild := context.WithCancel(ctx)
	defer cancelChild()
	start := time.Now()
	<-ctx.Done()
	assert.GreaterOrEqual(t, time.Since(start), 40*time.Millisecond)
	assert.ErrorIs(t, ctx.Err(), context.DeadlineExceeded)
	<-child.Done()
	assert.ErrorIs(t, child.Err(), context.DeadlineExceeded)

	late, cancel2 := newWithin(context.Background(), time.Millisecond)
	defer cancel2()
	time.Sleep(5 * time.Millisecond) // past the deadline, with no timer armed
	assert.ErrorIs(t, late.Err(), context.DeadlineExceeded)
	<-late.Done()

	late2, cancel3 := newWithin(context.Background(), time.Millisecond)
	defer cancel3()
	time.Sleep(5 * time.Millisecond)
	<-late2.Done() // Done first, then Err
	assert.ErrorIs(t, late2.Err(), context.DeadlineExceeded)
	cancel3()
	assert.ErrorIs(t, late2.Err(), context.DeadlineExceeded, "the first end stays")
}

// Done, Err and cancel from many goroutines at once (run with -race).
func TestConcurrent(t *testing.T) {
	for i := 0; i < 50; i++ {
		ctx, cancel := newWithin(context.Background(), time.Duration(i%3)*time.Millisecond)
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch g % 3 {
				case 0:
					<-ctx.Done()
				case 1:
					_ = ctx.Err()
				default:
					cancel()
				}
			}()
		}
		wg.Wait()
		<-ctx.Done()
		require.Error(t, ctx.Err())
	}
}
