package idem_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
)

// Restore refuses counts a store could never hold, and a takeover never
// wraps the fencing token: at the maximum, Begin refuses with a clear error
// and the record is left as it was.
func TestTokenAndAttemptBounds(t *testing.T) {
	clk := idemtest.NewClock()
	s := openBadger(t, &idem.Options{Now: clk.Now, GCInterval: -1})
	ctx := context.Background()
	rec := &idem.Record{Key: "k", State: idem.StateInProgress, Fingerprint: []byte("fp"), Attempts: math.MaxInt32,
		Token: idem.MaxToken, CreatedAt: clk.Now(), UpdatedAt: clk.Now(), LeaseUntil: clk.Now().Add(time.Second),
		ExpiresAt: clk.Now().Add(time.Hour)}

	big := *rec
	big.Attempts = math.MaxInt32 + 1
	require.ErrorContains(t, s.Restore(ctx, &big, false), "attempts 2147483648")
	big = *rec
	big.Token = idem.MaxToken + 1
	require.ErrorContains(t, s.Restore(ctx, &big, false), "token 9007199254740992")

	require.NoError(t, s.Restore(ctx, rec, false))
	clk.Advance(time.Minute) // the lease lapses: the next Begin would take over
	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.ErrorIs(t, err, idem.ErrTokenExhausted)
	require.Nil(t, l)
	got, err := s.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, uint64(idem.MaxToken), got.Token)

	// One below the maximum takes over once, and Attempts saturates.
	rec.Token--
	require.NoError(t, s.Restore(ctx, rec, true))
	l, _, err = s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	require.Equal(t, uint64(idem.MaxToken), l.Token())
	got, err = s.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, math.MaxInt32, got.Attempts)
	require.NoError(t, l.Complete(ctx, []byte("ok")))
}
