package idem_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
)

// A repair refused because the record changed returns a *ChangedError
// that carries the stored record and what was expected, reads like the
// other fencing errors, and is still ErrLeaseLost for errors.Is.
func TestChangedError(t *testing.T) {
	ctx := context.Background()
	clock := idemtest.NewClock()
	s := openBadger(t, &idem.Options{Now: clock.Now, GCInterval: -1})
	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	shown, err := s.Get(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Complete(ctx, []byte("charged")))
	tok := shown.Token

	for _, c := range []struct {
		name   string
		repair func() error
		want   string
		msg    string
	}{
		{"release", func() error { return s.ForceRelease(ctx, "k", tok) },
			fmt.Sprintf("in-progress with token %d", tok),
			fmt.Sprintf(`idem: force-release "k": lease lost: the stored record is completed with token %d, not in-progress with token %d`, tok, tok)},
		{"fail", func() error { return s.ForceFail(ctx, "k", tok, nil, true) },
			fmt.Sprintf("in-progress with token %d", tok),
			fmt.Sprintf(`idem: force-fail "k": lease lost: the stored record is completed with token %d, not in-progress with token %d`, tok, tok)},
		{"delete", func() error { return s.ForceDelete(ctx, "k", shown) },
			fmt.Sprintf("in-progress with token %d", tok),
			fmt.Sprintf(`idem: force-delete "k": lease lost: the stored record is completed with token %d, not in-progress with token %d`, tok, tok)},
		{"delete corrupt", func() error { return s.ForceDelete(ctx, "k", nil) },
			"corrupt",
			fmt.Sprintf(`idem: force-delete "k": lease lost: the stored record is completed with token %d, not corrupt`, tok)},
	} {
		err := c.repair()
		require.Error(t, err, c.name)
		assert.True(t, errors.Is(err, idem.ErrLeaseLost), c.name)
		var changed *idem.ChangedError
		require.True(t, errors.As(err, &changed), c.name)
		assert.Equal(t, "k", changed.Key, c.name)
		require.NotNil(t, changed.Stored, c.name)
		assert.Equal(t, idem.StateCompleted, changed.Stored.State, c.name)
		assert.Equal(t, tok, changed.Stored.Token, c.name)
		assert.Equal(t, "charged", string(changed.Stored.Response), c.name)
		assert.Equal(t, c.want, changed.Want, c.name)
		assert.EqualError(t, err, c.msg, c.name)
	}
	rec, err := s.Get(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, "charged", string(rec.Response), "nothing changed")

	// Other refusals are not a ChangedError.
	var changed *idem.ChangedError
	err = s.ForceRelease(ctx, "absent", 1)
	assert.ErrorIs(t, err, idem.ErrNotFound)
	assert.False(t, errors.As(err, &changed))
}

func TestSame(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 5)
	rec := &idem.Record{Key: "k", State: idem.StateInProgress, Token: 7, CreatedAt: t0, LeaseUntil: t0.Add(time.Minute)}
	for _, c := range []struct {
		name  string
		other idem.Record
		same  bool
	}{
		{"itself, another key and lease", idem.Record{Key: "other", State: idem.StateInProgress, Token: 7, CreatedAt: t0, LeaseUntil: t0.Add(time.Hour)}, true},
		{"state and token alone", idem.Record{State: idem.StateInProgress, Token: 7}, true},
		{"the same instant in another zone", idem.Record{State: idem.StateInProgress, Token: 7, CreatedAt: t0.In(time.FixedZone("x", 3600))}, true},
		{"completed, same token", idem.Record{State: idem.StateCompleted, Token: 7, CreatedAt: t0}, false},
		{"next lease", idem.Record{State: idem.StateInProgress, Token: 8, CreatedAt: t0}, false},
		{"re-created", idem.Record{State: idem.StateInProgress, Token: 7, CreatedAt: t0.Add(time.Nanosecond)}, false},
	} {
		assert.Equal(t, c.same, rec.Same(&c.other), c.name)
		assert.Equal(t, c.same, c.other.Same(rec), c.name+", the other way")
	}
}
