package idem_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
)

// staged is a Swapper that keeps its writes apart from the backend until
// commit, like a database transaction: rollback drops them.
type staged struct {
	b      idem.Backend
	writes map[string][]byte
	swaps  int
}

func (t *staged) Load(ctx context.Context, key string) ([]byte, error) {
	if v, ok := t.writes[key]; ok {
		return v, nil
	}
	return t.b.Load(ctx, key)
}

func (t *staged) CompareAndSwap(ctx context.Context, key string, old, new []byte, expireAt time.Time, durable bool) ([]byte, bool, error) {
	t.swaps++
	cur, err := t.Load(ctx, key)
	if err != nil {
		return nil, false, err
	}
	if string(cur) != string(old) || (cur == nil) != (old == nil) {
		return cur, false, nil
	}
	t.writes[key] = new
	return nil, true, nil
}

func (t *staged) commit(ctx context.Context) error {
	for k, v := range t.writes {
		cur, err := t.b.Load(ctx, k)
		if err != nil {
			return err
		}
		if _, ok, err := t.b.CompareAndSwap(ctx, k, cur, v, time.Now().Add(time.Hour), true); err != nil || !ok {
			return errors.Join(err, errors.New("commit lost a race"))
		}
	}
	return nil
}

func TestCompleteVia(t *testing.T) {
	s := openBadger(t, &idem.Options{GCInterval: -1})
	ctx := context.Background()
	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)

	var tx *staged
	via := func(b idem.Backend) (idem.Swapper, error) {
		tx = &staged{b: b, writes: map[string][]byte{}}
		return tx, nil
	}

	// Rolled back: nothing is stored, and the lease is still the caller's.
	require.NoError(t, l.CompleteVia(ctx, []byte("first"), via))
	require.Equal(t, 1, tx.swaps)
	rec, err := s.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, idem.StateInProgress, rec.State, "the staged completion is not visible")
	require.NoError(t, l.Extend(ctx, time.Minute), "the lease survives a rollback")

	// Committed: the completion is the stored outcome.
	require.NoError(t, l.CompleteVia(ctx, []byte("second"), via))
	require.NoError(t, tx.commit(ctx))
	rec, err = s.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, rec.State)
	require.Equal(t, "second", string(rec.Response))

	// Fenced like Complete: the record is no longer the lease's.
	require.ErrorIs(t, l.CompleteVia(ctx, []byte("third"), via), idem.ErrLeaseLost)
	require.Empty(t, tx.writes)

	// A via that refuses the backend is an error naming the key.
	l2, _, err := s.Begin(ctx, "k2", nil)
	require.NoError(t, err)
	err = l2.CompleteVia(ctx, nil, func(idem.Backend) (idem.Swapper, error) { return nil, errors.New("not my backend") })
	require.ErrorContains(t, err, `complete "k2": not my backend`)
}
