package idemtest

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/storeinternal"
)

// SyncBuffer is a bytes.Buffer that is safe for simultaneous use by
// multiple goroutines: a store's or a server's goroutines log into it while
// a test reads it. The zero value is ready to use.
type SyncBuffer struct {
	mu sync.Mutex // protects b
	b  bytes.Buffer
}

// Write appends p to the buffer.
func (w *SyncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// String returns what was written so far.
func (w *SyncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// logTo makes the store log into w.
func logTo(w *SyncBuffer) func(*idem.Options) {
	return func(o *idem.Options) { o.Logger = slog.New(slog.NewTextHandler(w, nil)) }
}

func testForceRelease(t *testing.T, open Opener) {
	ctx := context.Background()

	t.Run("releases the holder's lease and fences it out", func(t *testing.T) {
		var logs SyncBuffer
		s, clk := fixture(t, open, logTo(&logs))
		l := begin(t, s, "k", fpA)
		clk.Advance(leaseTTL + time.Second) // the holder crashed: a stale lease
		rec := rec0(t, s, "k")
		require.NoError(t, s.ForceRelease(ctx, "k", rec.Token))
		_, err := s.Get(ctx, "k")
		assert.ErrorIs(t, err, idem.ErrNotFound, "the key is free")
		assert.ErrorIs(t, l.Complete(ctx, []byte("late")), idem.ErrLeaseLost, "the old holder is fenced out")
		_, err = s.Get(ctx, "k")
		assert.ErrorIs(t, err, idem.ErrNotFound, "the late Complete wrote nothing")
		l2 := begin(t, s, "k", fpB)
		assert.NotEqual(t, rec.Token, l2.Token())
		assert.Contains(t, logs.String(), "operator repair")
		assert.Contains(t, logs.String(), "key=k")
		assert.Contains(t, logs.String(), "op=release")
	})

	t.Run("wrong token is refused", func(t *testing.T) {
		s, _ := fixture(t, open)
		l := begin(t, s, "k", fpA)
		err := s.ForceRelease(ctx, "k", l.Token()+1)
		assert.ErrorIs(t, err, idem.ErrLeaseLost)
		assert.Equal(t, idem.StateInProgress, rec0(t, s, "k").State)
		require.NoError(t, l.Complete(ctx, []byte("done")), "the holder is unaffected")
	})

	t.Run("holder completed meanwhile", func(t *testing.T) {
		s, _ := fixture(t, open)
		l := begin(t, s, "k", fpA)
		shown := rec0(t, s, "k")
		require.NoError(t, l.Complete(ctx, []byte("charged")))
		err := s.ForceRelease(ctx, "k", shown.Token)
		assert.ErrorIs(t, err, idem.ErrLeaseLost)
		var changed *idem.ChangedError
		require.ErrorAs(t, err, &changed)
		assert.Equal(t, idem.StateCompleted, changed.Stored.State, "the error carries the stored record")
		assert.Equal(t, []byte("charged"), changed.Stored.Response)
		got := rec0(t, s, "k")
		assert.Equal(t, idem.StateCompleted, got.State)
		assert.Equal(t, []byte("charged"), got.Response)
	})

	t.Run("taken over meanwhile", func(t *testing.T) {
		s, clk := fixture(t, open)
		begin(t, s, "k", fpA)
		shown := rec0(t, s, "k")
		clk.Advance(leaseTTL)
		l2 := begin(t, s, "k", fpA)
		assert.ErrorIs(t, s.ForceRelease(ctx, "k", shown.Token), idem.ErrLeaseLost)
		require.NoError(t, l2.Complete(ctx, nil), "the new holder is unaffected")
	})

	t.Run("absent key", func(t *testing.T) {
		s, _ := fixture(t, open)
		assert.ErrorIs(t, s.ForceRelease(ctx, "nope", 1), idem.ErrNotFound)
	})
}

func testForceFail(t *testing.T, open Opener) {
	ctx := context.Background()

	t.Run("permanent", func(t *testing.T) {
		var logs SyncBuffer
		s, clk := fixture(t, open, logTo(&logs))
		l := begin(t, s, "k", fpA)
		clk.Advance(time.Minute)
		require.NoError(t, s.ForceFail(ctx, "k", l.Token(), []byte("secret-body"), false))
		got := rec0(t, s, "k")
		assert.Equal(t, idem.StateFailed, got.State)
		assert.False(t, got.Retryable)
		assert.Equal(t, l.Token(), got.Token)
		assert.True(t, got.LeaseUntil.IsZero())
		assert.True(t, got.ExpiresAt.Equal(T0.Add(time.Minute+failedTTL)), "kept for FailedTTL, got %v", got.ExpiresAt)
		lease, rec, err := s.Begin(ctx, "k", fpA)
		require.NoError(t, err)
		assert.Nil(t, lease, "replayed")
		assert.Equal(t, []byte("secret-body"), rec.Response)
		assert.ErrorIs(t, l.Complete(ctx, []byte("late")), idem.ErrLeaseLost)
		assert.Contains(t, logs.String(), "op=fail")
		assert.NotContains(t, logs.String(), "secret-body", "responses are never logged")
	})

	t.Run("retryable", func(t *testing.T) {
		s, _ := fixture(t, open)
		l := begin(t, s, "k", fpA)
		require.NoError(t, s.ForceFail(ctx, "k", l.Token(), nil, true))
		l2 := begin(t, s, "k", fpA)
		assert.Equal(t, l.Token()+1, l2.Token())
		assert.Equal(t, 2, rec0(t, s, "k").Attempts)
	})

	t.Run("refused", func(t *testing.T) {
		s, _ := fixture(t, open, func(o *idem.Options) { o.MaxResponseSize = 4 })
		l := begin(t, s, "k", fpA)
		assert.ErrorIs(t, s.ForceFail(ctx, "k", l.Token(), []byte("too long"), false), idem.ErrTooLarge)
		assert.ErrorIs(t, s.ForceFail(ctx, "k", l.Token()-1, nil, false), idem.ErrLeaseLost)
		require.NoError(t, l.Fail(ctx, []byte("own"), false))
		assert.ErrorIs(t, s.ForceFail(ctx, "k", l.Token(), nil, true), idem.ErrLeaseLost, "a finished record is not in progress")
		got := rec0(t, s, "k")
		assert.Equal(t, []byte("own"), got.Response)
		assert.False(t, got.Retryable)
	})
}

// testForceRace races the holder's Complete against an operator's
// ForceRelease of the same lease: exactly one wins, and the record shows
// the winner's outcome.
func testForceRace(t *testing.T, open Opener) {
	ctx := context.Background()
	s, _ := fixture(t, open)
	const rounds = 40
	for i := range rounds {
		l := begin(t, s, "k", fpA)
		var completeErr, releaseErr error
		var wg sync.WaitGroup
		start := make(chan struct{})
		wg.Add(2)
		go func() { defer wg.Done(); <-start; completeErr = l.Complete(ctx, []byte("r")) }()
		go func() { defer wg.Done(); <-start; releaseErr = s.ForceRelease(ctx, "k", l.Token()) }()
		close(start)
		wg.Wait()
		if (completeErr == nil) == (releaseErr == nil) {
			t.Fatalf("round %d: complete: %v, release: %v; want exactly one to win", i, completeErr, releaseErr)
		}
		rec, err := s.Get(ctx, "k")
		if completeErr == nil {
			assert.ErrorIs(t, releaseErr, idem.ErrLeaseLost)
			require.NoError(t, err)
			assert.Equal(t, idem.StateCompleted, rec.State)
			require.NoError(t, s.ForceDelete(ctx, "k", rec))
		} else {
			assert.ErrorIs(t, completeErr, idem.ErrLeaseLost)
			assert.ErrorIs(t, err, idem.ErrNotFound)
		}
	}
}

func testForceDelete(t *testing.T, open Opener) {
	ctx := context.Background()

	t.Run("the record seen", func(t *testing.T) {
		var logs SyncBuffer
		s, _ := fixture(t, open, logTo(&logs))
		require.NoError(t, begin(t, s, "k", fpA).Complete(ctx, []byte("x")))
		seen := rec0(t, s, "k")
		require.NoError(t, s.ForceDelete(ctx, "k", seen))
		_, err := s.Get(ctx, "k")
		assert.ErrorIs(t, err, idem.ErrNotFound)
		assert.ErrorIs(t, s.ForceDelete(ctx, "k", seen), idem.ErrNotFound)
		assert.Contains(t, logs.String(), "op=delete")
	})

	t.Run("changed since seen", func(t *testing.T) {
		s, _ := fixture(t, open)
		l := begin(t, s, "k", fpA)
		seen := rec0(t, s, "k")
		require.NoError(t, l.Complete(ctx, []byte("x")))
		err := s.ForceDelete(ctx, "k", seen)
		assert.ErrorIs(t, err, idem.ErrLeaseLost, "in-progress was seen, completed is stored")
		var changed *idem.ChangedError
		require.ErrorAs(t, err, &changed)
		assert.Equal(t, idem.StateCompleted, changed.Stored.State)
		assert.Equal(t, seen.Token, changed.Stored.Token)
		assert.Equal(t, idem.StateCompleted, rec0(t, s, "k").State)
		err = s.ForceDelete(ctx, "k", nil)
		assert.ErrorIs(t, err, idem.ErrLeaseLost, "nil means corrupt, and this record is not")
		require.ErrorAs(t, err, &changed)
		assert.Equal(t, "corrupt", changed.Want)
		assert.Equal(t, idem.StateCompleted, rec0(t, s, "k").State)
	})

	t.Run("corrupt", func(t *testing.T) {
		s, _ := fixture(t, open)
		_, swapped, err := backendOf(s).CompareAndSwap(ctx, "bad", nil, []byte{0x91, 0x07}, time.Now().Add(time.Hour), false)
		require.NoError(t, err)
		require.True(t, swapped)
		_, err = s.Get(ctx, "bad")
		require.ErrorIs(t, err, idem.ErrCorrupt)
		assert.ErrorIs(t, s.ForceDelete(ctx, "bad", &idem.Record{Key: "bad", State: idem.StateCompleted, Token: 1}), idem.ErrCorrupt)
		require.NoError(t, s.ForceDelete(ctx, "bad", nil))
		data, err := backendOf(s).Load(ctx, "bad")
		require.NoError(t, err)
		assert.Nil(t, data)
	})
}

func testRestore(t *testing.T, open Opener) {
	ctx := context.Background()
	src, clk := fixture(t, open)
	require.NoError(t, begin(t, src, "done", fpA).Complete(ctx, []byte("resp")))
	begin(t, src, "running", fpB)
	done, running := rec0(t, src, "done"), rec0(t, src, "running")

	dst := open(t, &idem.Options{LeaseTTL: leaseTTL, CompletedTTL: completedTTL, FailedTTL: failedTTL, GCInterval: -1, Now: clk.Now})
	require.NoError(t, dst.Restore(ctx, done, false))
	require.NoError(t, dst.Restore(ctx, running, false))
	got := rec0(t, dst, "done")
	assert.Equal(t, done.Token, got.Token)
	assert.Equal(t, done.Attempts, got.Attempts)
	assert.Equal(t, done.Response, got.Response)
	assert.Equal(t, done.Fingerprint, got.Fingerprint)
	assert.True(t, done.CreatedAt.Equal(got.CreatedAt) && done.ExpiresAt.Equal(got.ExpiresAt))

	// The restored records behave as in the source store.
	l, rec, err := dst.Begin(ctx, "done", fpA)
	require.NoError(t, err)
	assert.Nil(t, l)
	assert.Equal(t, []byte("resp"), rec.Response)
	_, _, err = dst.Begin(ctx, "running", fpB)
	assert.ErrorIs(t, err, idem.ErrInProgress)
	clk.Advance(leaseTTL)
	l = begin(t, dst, "running", fpB)
	assert.Equal(t, running.Token+1, l.Token(), "takeover continues the token")

	// Restoring the same record again is a no-op; another one is refused.
	require.NoError(t, dst.Restore(ctx, done, false))
	other := *done
	other.Response = []byte("other")
	assert.ErrorIs(t, dst.Restore(ctx, &other, false), idem.ErrExists)
	assert.Equal(t, []byte("resp"), rec0(t, dst, "done").Response)
	require.NoError(t, dst.Restore(ctx, &other, true))
	assert.Equal(t, []byte("other"), rec0(t, dst, "done").Response)

	// A corrupt record is not live: Restore replaces it.
	_, _, err = backendOf(dst).CompareAndSwap(ctx, "bad", nil, []byte("junk"), time.Now().Add(time.Hour), false)
	require.NoError(t, err)
	fixed := *done
	fixed.Key = "bad"
	require.NoError(t, dst.Restore(ctx, &fixed, false))
	assert.Equal(t, idem.StateCompleted, rec0(t, dst, "bad").State)

	bad := []func(r *idem.Record){
		func(r *idem.Record) { r.Token = 0 },
		func(r *idem.Record) { r.State = 9 },
		func(r *idem.Record) { r.ExpiresAt = clk.Now() }, // expired
		func(r *idem.Record) { r.Key = "" },
		func(r *idem.Record) { r.LeaseUntil = clk.Now().Add(time.Hour) },
		func(r *idem.Record) { r.Retryable = true },
		func(r *idem.Record) { r.CreatedAt = time.Time{} },
	}
	for i, mod := range bad {
		r := *done
		r.Key = "new"
		mod(&r)
		err := dst.Restore(ctx, &r, true)
		assert.Error(t, err, "case %d", i)
	}
	_, err = dst.Get(ctx, "new")
	assert.ErrorIs(t, err, idem.ErrNotFound, "nothing written by refused restores")
	assert.Error(t, dst.Restore(ctx, nil, false))

	// A lease whose record is put back with a longer life still ends it
	// after the life the lease itself wrote has passed: it is fenced on
	// what is stored, not on its own last write.
	kept := begin(t, dst, "kept", fpA)
	r := *rec0(t, dst, "kept")
	r.LeaseUntil = clk.Now().Add(2 * completedTTL)
	r.ExpiresAt = r.LeaseUntil
	require.NoError(t, dst.Restore(ctx, &r, true))
	clk.Advance(completedTTL + time.Hour)
	require.NoError(t, kept.Complete(ctx, []byte("kept")), "the stored record is still the lease's")
	assert.Equal(t, []byte("kept"), rec0(t, dst, "kept").Response)
}

// testObserver checks that Options.Observer is told every Begin, Get and
// lease step with its outcome.
func testObserver(t *testing.T, open Opener) {
	ctx := context.Background()
	obs := &recordingObserver{}
	s, clk := fixture(t, open, func(o *idem.Options) { o.Observer = obs })
	l := begin(t, s, "k", fpA)
	_, _, _ = s.Begin(ctx, "k", fpA)
	_, _, _ = s.Begin(ctx, "k", fpB)
	require.NoError(t, l.Extend(ctx, time.Second))
	require.NoError(t, l.Complete(ctx, nil))
	_, _, _ = s.Begin(ctx, "k", fpA)
	_, _ = s.Get(ctx, "k")
	_, _ = s.Get(ctx, "nope")
	l2 := begin(t, s, "j", fpA)
	clk.Advance(leaseTTL)
	begin(t, s, "j", fpA)
	assert.ErrorIs(t, l2.Fail(ctx, nil, true), idem.ErrLeaseLost)
	_, err := s.Get(ctx, "")
	require.Error(t, err)
	assert.Equal(t, []string{
		"begin lease", "begin in-progress", "begin mismatch", "extend ok", "complete ok",
		"begin replay", "get hit", "get miss", "begin lease", "begin lease", "fail lease-lost", "get error",
	}, obs.calls())
	assert.False(t, obs.negative, "durations are never negative")
}

type recordingObserver struct {
	mu       sync.Mutex // protects got and negative
	got      []string
	negative bool
}

func (o *recordingObserver) Observe(op, outcome string, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, op+" "+outcome)
	o.negative = o.negative || d < 0
}

func (o *recordingObserver) calls() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.got...)
}

// backendOf returns the backend under s, for planting records the store
// would never write.
func backendOf(s *idem.Store) idem.Backend {
	return storeinternal.Backend(s).(idem.Backend)
}
