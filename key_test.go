package idem_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
)

// The request's key reaches fn, and the derived keys of its outbound calls
// are the same on every run of the request: a re-run (here after a
// retryable failure) sends the downstream the keys it sent before.
func TestSubKeyStableAcrossRuns(t *testing.T) {
	s := openBadger(t, &idem.Options{GCInterval: -1})
	ctx := context.Background()
	assert.Equal(t, "", idem.SubKey(ctx, "charge"), "outside a request")
	_, ok := idem.KeyFrom(ctx)
	assert.False(t, ok)

	var seen []string
	run := func(key string, fail bool) {
		_, _, err := s.Do(ctx, key, []byte("fp"), func(ctx context.Context) ([]byte, error) {
			k, ok := idem.KeyFrom(ctx)
			require.True(t, ok)
			require.Equal(t, key, k)
			seen = append(seen, idem.SubKey(ctx, "charge-card"), idem.SubKey(ctx, "send-email"))
			if fail {
				return nil, errors.New("downstream timed out")
			}
			return []byte("ok"), nil
		})
		if fail {
			require.Error(t, err)
		} else {
			require.NoError(t, err)
		}
	}
	run("order-1", true)
	run("order-1", false)
	run("order-2", false)
	require.Len(t, seen, 6)
	assert.Equal(t, seen[0], seen[2], "the re-run charges with the same key")
	assert.Equal(t, seen[1], seen[3])
	assert.NotEqual(t, seen[0], seen[1], "one key per outbound call")
	assert.NotEqual(t, seen[0], seen[4], "another request, other keys")
	assert.Len(t, seen[0], 64)
}

// A holder whose lease lapsed and was taken over while fn ran never hands
// out fn's outcome: Do returns the newer holder's stored outcome as a
// replay, or ErrLeaseLost while the newer holder still runs.
func TestDoLeaseLostReturnsStoredOutcome(t *testing.T) {
	for _, finished := range []bool{true, false} {
		clk := idemtest.NewClock()
		s := openBadger(t, &idem.Options{Now: clk.Now, LeaseTTL: time.Hour, GCInterval: -1})
		ctx := context.Background()
		resp, replayed, err := s.Do(ctx, "k", []byte("fp"), func(context.Context) ([]byte, error) {
			clk.Advance(2 * time.Hour) // the holder stalls past its lease
			l, _, err := s.Begin(ctx, "k", []byte("fp"))
			require.NoError(t, err)
			require.NotNil(t, l, "taken over")
			if finished {
				require.NoError(t, l.Complete(ctx, []byte("newer")))
			}
			return []byte("stale"), nil
		})
		if finished {
			require.NoError(t, err)
			assert.True(t, replayed)
			assert.Equal(t, "newer", string(resp))
		} else {
			require.ErrorIs(t, err, idem.ErrLeaseLost)
			assert.Nil(t, resp)
			assert.False(t, replayed)
		}
	}
}
