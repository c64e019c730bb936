package idem

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/internal/badgerkv"
)

// pausingBackend is a real Badger backend whose Delete, once armed, waits
// before deleting, so a test can run other calls in that moment.
type pausingBackend struct {
	embedded
	deleting chan struct{} // receives when Delete has been called
	resume   chan struct{} // closed to let Delete go on
}

func (p *pausingBackend) Delete(ctx context.Context, key string) error {
	p.deleting <- struct{}{}
	<-p.resume
	return p.embedded.Delete(ctx, key)
}

// A Get that reads the backend while a Delete of the same key is under way
// must not leave the deleted record in the read cache: after Delete returns,
// Begin runs the request again instead of replaying the deleted outcome.
func TestDeleteDuringGetLeavesNoCachedRecord(t *testing.T) {
	kv, err := badgerkv.Open(badgerkv.Config{InMemory: true})
	require.NoError(t, err)
	pb := &pausingBackend{embedded: embedded{kv}, deleting: make(chan struct{}), resume: make(chan struct{})}
	s, err := New(pb, &Options{CacheSize: 1 << 20, GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	ctx := context.Background()

	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	require.NoError(t, l.Complete(ctx, []byte("charged")))

	deleted := make(chan error, 1)
	go func() { deleted <- s.Delete(ctx, "k") }()
	<-pb.deleting
	// The record is still stored: this Get reads it from the backend.
	rec, err := s.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, StateCompleted, rec.State)
	s.cache.c.Wait() // let the cache apply what the Get put
	close(pb.resume)
	require.NoError(t, <-deleted)

	_, err = s.Get(ctx, "k")
	require.ErrorIs(t, err, ErrNotFound, "a deleted record is answered from the cache")
	l, rec, err = s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	require.NotNil(t, l, "Begin after Delete replays the deleted outcome %q", rec.Response)
}

// Gets that read a record while an operator deletes it must not cache it
// once the deletion has returned: the deletion count is checked and the
// record cached as one step, ordered against the deletion.
func TestForceDeleteRacingGetsLeavesNoCachedRecord(t *testing.T) {
	s, err := Open("", &Options{InMemory: true, CacheSize: 64 << 20, GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	ctx := context.Background()
	big := make([]byte, 256<<10) // a large response widens the copy before the cache set
	for i := 0; i < 200; i++ {
		l, _, err := s.Begin(ctx, "k", []byte("fp"))
		require.NoError(t, err)
		require.NoError(t, l.Complete(ctx, big))
		seen, err := s.Get(ctx, "k")
		require.NoError(t, err)
		s.cache.del("k") // make the Gets below read the backend
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() { _, _ = s.Get(ctx, "k") })
		}
		require.NoError(t, s.ForceDelete(ctx, "k", seen))
		wg.Wait()
		s.cache.c.Wait()
		_, err = s.Get(ctx, "k")
		require.ErrorIs(t, err, ErrNotFound, "iteration %d: a deleted record is answered from the cache", i)
	}
}
