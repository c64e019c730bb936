package idem_test

import (
	"context"
	"runtime"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
)

// An fn that never returns because its goroutine exits (runtime.Goexit,
// which t.FailNow and require call inside fn) ends the lease like a panic
// does: the key is left retryable and the renewal stops, rather than the
// key staying in progress, renewed for as long as ctx lives.
func TestDoGoexitLeavesKeyRetryable(t *testing.T) {
	clk := idemtest.NewClock()
	s := openBadger(t, &idem.Options{Now: clk.Now, GCInterval: -1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // ends a renewal left running, so the failure is the assertion, not a leak

	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _, _ = s.Do(ctx, "k", []byte("fp"), func(context.Context) ([]byte, error) {
			runtime.Goexit()
			return nil, nil
		})
	}()
	<-done

	l, rec, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err, "record left behind: %+v", rec)
	require.NotNil(t, l, "the request runs again at once")
	require.Equal(t, 2, rec.Attempts, "a retry of the failed record, not a takeover after its lease")
}

// BenchmarkDo measures Do on fresh keys on the embedded store: the claim,
// fn, and the completion. Compare allocations with -benchmem.
func BenchmarkDo(b *testing.B) {
	for _, sync := range []struct {
		name string
		mode idem.Sync
	}{{"SyncNever", idem.SyncNever}, {"SyncAlways", idem.SyncAlways}} {
		b.Run(sync.name, func(b *testing.B) {
			s, err := idem.Open(b.TempDir(), &idem.Options{Sync: sync.mode, GCInterval: -1})
			require.NoError(b, err)
			defer s.Close()
			ctx := context.Background()
			resp := []byte(`{"id":"ch_1","amount":1000,"currency":"eur","status":"succeeded"}`)
			fn := func(context.Context) ([]byte, error) { return resp, nil }
			fp := []byte("0123456789abcdef0123456789abcdef")
			i := 0
			for b.Loop() {
				i++
				if _, _, err := s.Do(ctx, "key-"+strconv.Itoa(i), fp, fn); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
