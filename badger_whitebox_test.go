package idem

import (
	"bytes"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Concurrent waiters share fsyncs, and every waiter returns only after a
// sync that started after it asked has finished.
func TestGroupSyncShares(t *testing.T) {
	var started, lastDone atomic.Int64 // start index of the last finished sync
	var calls atomic.Int64
	g := &groupSync{sync: func() error {
		n := started.Add(1)
		calls.Add(1)
		time.Sleep(2 * time.Millisecond)
		lastDone.Store(n)
		return nil
	}}
	const writers, rounds = 64, 20
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				before := started.Load()
				require.NoError(t, g.wait())
				if done := lastDone.Load(); done <= before {
					t.Errorf("wait returned on sync %d, which started before the waiter asked (after sync %d)", done, before)
				}
			}
		}()
	}
	wg.Wait()
	total := int64(writers * rounds)
	assert.Less(t, calls.Load(), total/4, "syncs are shared: %d syncs for %d waits", calls.Load(), total)
}

func TestGroupSyncError(t *testing.T) {
	boom := errors.New("disk on fire")
	fail := atomic.Bool{}
	g := &groupSync{sync: func() error {
		if fail.Load() {
			return boom
		}
		return nil
	}}
	require.NoError(t, g.wait())
	fail.Store(true)
	require.ErrorIs(t, g.wait(), boom)
	fail.Store(false)
	require.NoError(t, g.wait())
}

func TestBadgerLoggerLevels(t *testing.T) {
	var buf bytes.Buffer
	l := badgerLogger{slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	l.Infof("info %d\n", 1)
	l.Debugf("debug %d", 2)
	assert.Empty(t, buf.String(), "info and debug are dropped")
	l.Warningf("careful %d\n", 3)
	l.Errorf("broken %d", 4)
	assert.Contains(t, buf.String(), `level=WARN msg="badger: careful 3"`)
	assert.Contains(t, buf.String(), `level=ERROR msg="badger: broken 4"`)
	badgerLogger{}.Errorf("silent when nil")
}

func TestPhysicalExpiry(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) // the store's (injected) clock
	real := time.Unix(1000, 900_000_000)               // the real clock
	for _, tc := range []struct {
		remaining time.Duration
		want      int64
	}{
		{0, 1002},
		{-time.Hour, 1002},
		{time.Second, 1003},
		{24 * time.Hour, 1000 + 86400 + 2},
	} {
		got := physicalExpiry(now.Add(tc.remaining), now, real)
		assert.Equal(t, tc.want, got.Unix(), "remaining %v", tc.remaining)
		assert.False(t, got.Before(real.Add(tc.remaining)), "never before the logical expiry")
	}
}
