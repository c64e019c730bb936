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

// A record kept "for ever" (the longest Duration, or any lifetime that
// ends past 2262, where Unix nanoseconds overflow) is kept, not expired at
// once: an expired completion would run the payment again.
func TestLongestTTLKeepsRecord(t *testing.T) {
	clk := idemtest.NewClock()
	s := openBadger(t, &idem.Options{Now: clk.Now, GCInterval: -1})
	for _, d := range []time.Duration{math.MaxInt64, 250 * 365 * 24 * time.Hour} {
		ctx := idem.WithTTL(context.Background(), d)
		key := "k" + d.String()
		l, _, err := s.Begin(ctx, key, []byte("fp"))
		require.NoError(t, err)
		require.NoError(t, l.Complete(ctx, []byte("charged")))

		rec, err := s.Get(ctx, key)
		require.NoError(t, err, "WithTTL(%v)", d)
		require.Equal(t, idem.StateCompleted, rec.State)
		l, rec, err = s.Begin(ctx, key, []byte("fp"))
		require.NoError(t, err)
		require.Nil(t, l, "WithTTL(%v): the completed request runs again", d)
		require.Equal(t, "charged", string(rec.Response))
	}
}

// A lease extended by the longest Duration stays live: it must not read
// back as lapsed and be taken over while its holder runs.
func TestLongestExtendKeepsLease(t *testing.T) {
	clk := idemtest.NewClock()
	s := openBadger(t, &idem.Options{Now: clk.Now, GCInterval: -1})
	ctx := context.Background()
	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	require.NoError(t, l.Extend(ctx, math.MaxInt64))
	clk.Advance(time.Hour)
	l2, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.ErrorIs(t, err, idem.ErrInProgress)
	require.Nil(t, l2)
	require.NoError(t, l.Complete(ctx, []byte("ok")))
}
