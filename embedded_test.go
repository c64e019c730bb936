package idem_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/storeinternal"
)

func TestLockedDirectory(t *testing.T) {
	dir := t.TempDir()
	s := openIn(t, dir, nil)
	_, err := idem.Open(dir, nil)
	require.ErrorIs(t, err, idem.ErrLocked)
	assert.Contains(t, err.Error(), dir)
	assert.Contains(t, err.Error(), "in use by another process")
	// The holder is unharmed.
	_, _, err = s.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) { return []byte("ok"), nil })
	require.NoError(t, err)
}

// The lock is held across processes: a child process holds the directory,
// and this one is refused with ErrLocked until the child exits.
func TestLockedByAnotherProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestMain_holdChild$")
	cmd.Env = append(os.Environ(), "IDEM_HOLD_CHILD="+dir)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "holding" {
	}
	_, err = idem.Open(dir, nil)
	require.ErrorIs(t, err, idem.ErrLocked)
	assert.Contains(t, err.Error(), "in use by another process")
	require.NoError(t, stdin.Close()) // the child closes its store and exits
	require.NoError(t, cmd.Wait())
	s := openIn(t, dir, nil)
	rec, err := s.Get(context.Background(), "held")
	require.NoError(t, err, "what the child wrote is there")
	assert.Equal(t, idem.StateCompleted, rec.State)
}

// The child of TestLockedByAnotherProcess: holds the store open until its
// standard input closes.
func TestMain_holdChild(t *testing.T) {
	dir := os.Getenv("IDEM_HOLD_CHILD")
	if dir == "" {
		t.Skip("run by TestLockedByAnotherProcess")
	}
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	_, _, err = s.Do(context.Background(), "held", nil, func(context.Context) ([]byte, error) { return []byte("x"), nil })
	require.NoError(t, err)
	fmt.Println("holding")
	_, _ = io.Copy(io.Discard, os.Stdin)
	require.NoError(t, s.Close())
}

func openIn(t *testing.T, dir string, opts *idem.Options) *idem.Store {
	t.Helper()
	s, err := idem.Open(dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func TestOpenBadInput(t *testing.T) {
	_, err := idem.Open("", nil)
	assert.ErrorContains(t, err, "no data directory")
	_, err = idem.Open(t.TempDir(), &idem.Options{InMemory: true})
	assert.ErrorContains(t, err, "InMemory")
	_, err = idem.Open(t.TempDir(), &idem.Options{LeaseTTL: -time.Second})
	assert.ErrorContains(t, err, "LeaseTTL")
	_, err = idem.Open(t.TempDir(), &idem.Options{MaxKeySize: idem.MaxKeySizeLimit + 1})
	assert.ErrorContains(t, err, "MaxKeySize")
	_, err = idem.Open(t.TempDir(), &idem.Options{MaxResponseSize: idem.MaxResponseSizeLimit + 1})
	assert.ErrorContains(t, err, "MaxResponseSize")
	f := t.TempDir() + "/file"
	require.NoError(t, os.WriteFile(f, []byte("x"), 0o600))
	_, err = idem.Open(f, nil)
	assert.Error(t, err, "a file is not a data directory")
}

// The largest response the options allow is stored and replayed by
// Badger, durably, and one byte more is ErrTooLarge with nothing stored.
func TestLargestResponse(t *testing.T) {
	ctx := context.Background()
	s := openIn(t, t.TempDir(), &idem.Options{MaxResponseSize: idem.MaxResponseSizeLimit, GCInterval: -1})
	big := bytes.Repeat([]byte("0123456789abcdef"), idem.MaxResponseSizeLimit/16)
	l, _, err := s.Begin(ctx, "big", []byte("fp"))
	require.NoError(t, err)
	require.ErrorIs(t, l.Complete(ctx, append(big, 'x')), idem.ErrTooLarge)
	require.NoError(t, l.Complete(ctx, big))
	_, rec, err := s.Begin(ctx, "big", []byte("fp"))
	require.NoError(t, err)
	require.True(t, bytes.Equal(big, rec.Response), "the replay is the whole response")
}

// A record that cannot be decoded is reported as ErrCorrupt naming its key,
// and the store goes on serving every other key.
func TestCorruptRecord(t *testing.T) {
	ctx := context.Background()
	s := openBadger(t, &idem.Options{GCInterval: -1})
	b := storeinternal.Backend(s).(idem.Backend)
	_, swapped, err := b.CompareAndSwap(ctx, "bad", nil, []byte("\x9bgarbage"), time.Now().Add(time.Hour), false)
	require.NoError(t, err)
	require.True(t, swapped)
	_, _, err = s.Do(ctx, "good", []byte("fp"), func(context.Context) ([]byte, error) { return []byte("fine"), nil })
	require.NoError(t, err)

	_, err = s.Get(ctx, "bad")
	require.ErrorIs(t, err, idem.ErrCorrupt)
	assert.Contains(t, err.Error(), `"bad"`)
	_, _, err = s.Begin(ctx, "bad", []byte("fp"))
	require.ErrorIs(t, err, idem.ErrCorrupt, "a corrupt record is never overwritten by a claim")
	rep, err := s.CollectGarbage(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, rep.Corrupt)
	assert.Equal(t, 1, rep.Records)

	rec, err := s.Get(ctx, "good")
	require.NoError(t, err)
	assert.Equal(t, "fine", string(rec.Response))

	// The operator's way out: delete it.
	require.NoError(t, s.Delete(ctx, "bad"))
	l, _, err := s.Begin(ctx, "bad", []byte("fp"))
	require.NoError(t, err)
	require.NotNil(t, l)
}

// Records vanish at their TTL by the injected clock; the background loop
// sweeps and reports stale leases; Close stops it (TestMain checks for
// leaked goroutines).
func TestExpiryAndBackgroundGC(t *testing.T) {
	ctx := context.Background()
	clk := idemtest.NewClock()
	s := openIn(t, t.TempDir(), &idem.Options{Now: clk.Now, GCInterval: 20 * time.Millisecond, LeaseTTL: time.Minute, CompletedTTL: time.Hour})
	for i := 0; i < 50; i++ {
		_, _, err := s.Do(ctx, fmt.Sprint("done-", i), nil, func(context.Context) ([]byte, error) { return []byte("x"), nil })
		require.NoError(t, err)
	}
	clk.Advance(30 * time.Minute)
	_, _, err := s.Begin(ctx, "crashed", nil) // its holder never comes back
	require.NoError(t, err)

	clk.Advance(30*time.Minute - time.Second)
	_, err = s.Get(ctx, "done-0")
	require.NoError(t, err)
	waitFor(t, func() bool { return s.Stats().StaleLeases == 1 }, "a sweep reporting the stale lease")

	clk.Advance(time.Second)
	_, err = s.Get(ctx, "done-0")
	require.ErrorIs(t, err, idem.ErrNotFound)
	before := s.Stats().Sweeps
	waitFor(t, func() bool { return s.Stats().Sweeps > before+1 }, "more sweeps")
	rep, err := s.CollectGarbage(ctx)
	require.NoError(t, err)
	assert.Equal(t, 50, rep.Expired)
	assert.Equal(t, 1, rep.Records, "only the in-progress record is still alive")
	assert.Equal(t, 1, rep.StaleLeases)
	st := s.Stats()
	assert.GreaterOrEqual(t, st.GCRuns, uint64(2))
	assert.Positive(t, st.DiskBytes)
	assert.Empty(t, st.LastGCErr)
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSyncModes(t *testing.T) {
	for _, mode := range []idem.Sync{idem.SyncAlways, idem.SyncPeriodic, idem.SyncNever} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			s, err := idem.Open(dir, &idem.Options{Sync: mode, SyncInterval: 5 * time.Millisecond})
			require.NoError(t, err)
			for i := 0; i < 20; i++ {
				_, _, err := s.Do(context.Background(), fmt.Sprint(i), nil, func(context.Context) ([]byte, error) { return []byte("r"), nil })
				require.NoError(t, err)
			}
			time.Sleep(20 * time.Millisecond) // let the periodic sync run a few times
			require.NoError(t, s.Close())
			s = openIn(t, dir, nil)
			rec, err := s.Get(context.Background(), "19")
			require.NoError(t, err)
			assert.Equal(t, idem.StateCompleted, rec.State)
		})
	}
	_, err := idem.Open(t.TempDir(), &idem.Options{Sync: 7})
	assert.ErrorContains(t, err, "Sync")
}

// The durability child: completes records and prints each key once
// Complete has returned, until it is killed.
func TestMain_durabilityChild(t *testing.T) {
	dir := os.Getenv("IDEM_DURABILITY_CHILD")
	if dir == "" {
		t.Skip("run by TestDurabilitySIGKILL")
	}
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(3)
	}
	prefix := os.Getenv("IDEM_DURABILITY_PREFIX")
	ctx := context.Background()
	for i := 0; ; i++ {
		key := fmt.Sprintf("%s-%d", prefix, i)
		l, _, err := s.Begin(ctx, key, []byte("fp"))
		if err == nil && l != nil {
			err = l.Complete(ctx, []byte("resp-"+key))
		}
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(3)
		}
		fmt.Println(key) // os.Stdout is unbuffered: the parent sees it at once
	}
}

// A completed record whose Complete returned survives SIGKILL of the
// process at any moment.
func TestDurabilitySIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	for round := 0; round < 4; round++ {
		prefix := fmt.Sprintf("round%d", round)
		cmd := exec.Command(os.Args[0], "-test.run=^TestMain_durabilityChild$", "-test.v=false")
		cmd.Env = append(os.Environ(), "IDEM_DURABILITY_CHILD="+dir, "IDEM_DURABILITY_PREFIX="+prefix)
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		var acked []string
		sc := bufio.NewScanner(out)
		killAfter := 50 + rand.IntN(400)
		for sc.Scan() {
			line := sc.Text()
			require.False(t, strings.HasPrefix(line, "ERR"), "child: %s", line)
			if !strings.HasPrefix(line, prefix) {
				continue
			}
			acked = append(acked, line)
			if len(acked) == killAfter {
				require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
				break
			}
		}
		// Lines already written before the kill are acknowledged too.
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, prefix) {
				acked = append(acked, line)
			}
		}
		_ = cmd.Wait()
		require.Len(t, acked[:killAfter], killAfter)

		s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
		require.NoError(t, err, "reopen after SIGKILL")
		ctx := context.Background()
		for _, key := range acked {
			rec, err := s.Get(ctx, key)
			require.NoError(t, err, "round %d: acknowledged key %s lost", round, key)
			require.Equal(t, idem.StateCompleted, rec.State, key)
			require.Equal(t, "resp-"+key, string(rec.Response))
		}
		t.Logf("round %d: %d acknowledged completions survived SIGKILL", round, len(acked))
		require.NoError(t, s.Close())
	}
}

// The embedded engine's storage errors reach the caller under the
// store's names: writes refused below the disk reserve are ErrNoSpace,
// and reads go on.
func TestEmbeddedNoSpace(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	_, _, err = s.Do(ctx, "before", nil, func(context.Context) ([]byte, error) { return []byte("ok"), nil })
	require.NoError(t, err)
	assert.Positive(t, s.DiskFree())
	require.NoError(t, s.Close())

	s, err = idem.Open(dir, &idem.Options{GCInterval: -1, DiskReserve: 1 << 62})
	require.NoError(t, err)
	defer s.Close()
	_, _, err = s.Begin(ctx, "after", nil)
	require.ErrorIs(t, err, idem.ErrNoSpace)
	rec, err := s.Get(ctx, "before")
	require.NoError(t, err, "reads go on")
	assert.Equal(t, "ok", string(rec.Response))

	_, err = idem.New(storeinternal.Backend(s).(idem.Backend), &idem.Options{DiskReserve: 1})
	require.ErrorContains(t, err, "DiskReserve", "another backend has no disk reserve")
	_, err = idem.New(storeinternal.Backend(s).(idem.Backend), &idem.Options{DiscardDamagedLog: true})
	require.ErrorContains(t, err, "DiscardDamagedLog", "another backend has no Badger log")
}

// A data directory with tables but no MANIFEST is refused as damaged,
// naming the file, rather than opened as an empty store.
func TestEmbeddedDamageRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	_, _, err = s.Do(context.Background(), "k", nil, func(context.Context) ([]byte, error) { return []byte("ok"), nil })
	require.NoError(t, err)
	require.NoError(t, s.Close())
	require.NoError(t, os.Remove(dir+"/MANIFEST"))
	_, err = idem.Open(dir, nil)
	require.ErrorIs(t, err, idem.ErrCorrupt)
	require.ErrorContains(t, err, "MANIFEST")
}

func TestMain_holderChild(t *testing.T) {
	dir := os.Getenv("IDEM_HOLDER_CHILD")
	if dir == "" {
		t.Skip("run by TestRestartFreesDeadHolders")
	}
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1, LeaseTTL: time.Hour})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(3)
	}
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		key := fmt.Sprintf("k%d", i)
		l, _, err := s.Begin(ctx, key, []byte("fp"))
		if err != nil || l == nil {
			fmt.Println("ERR", err)
			os.Exit(3)
		}
		if i%2 == 0 {
			if err := l.Complete(ctx, []byte("done")); err != nil {
				fmt.Println("ERR", err)
				os.Exit(3)
			}
		}
		// The odd keys stay leased, for an hour, as the process dies.
		fmt.Printf("%s %d\n", key, l.Token())
	}
	fmt.Println("READY")
	select {} // until killed
}

// Keys whose holder died with the previous process are free as soon as
// the store reopens, not after their (hour-long) lease: the directory lock
// proves the holder is gone. Tokens still grow, and finished keys replay.
func TestRestartFreesDeadHolders(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestMain_holderChild$", "-test.v=false")
	cmd.Env = append(os.Environ(), "IDEM_HOLDER_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	tokens := map[string]uint64{}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		require.False(t, strings.HasPrefix(line, "ERR"), "child: %s", line)
		if line == "READY" {
			break
		}
		var key string
		var tok uint64
		_, err := fmt.Sscan(line, &key, &tok)
		require.NoError(t, err)
		tokens[key] = tok
	}
	require.Len(t, tokens, 20)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()

	s := openIn(t, dir, &idem.Options{GCInterval: -1, LeaseTTL: time.Hour})
	ctx := context.Background()
	c, err := s.Census(ctx, "", 0)
	require.NoError(t, err)
	assert.Equal(t, 10, c.StaleLeases, "every lease of the dead process is stale at once")
	// Wait does not wait out the dead holder's hour-long lease either.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	rec, err := s.Wait(wctx, "k1")
	cancel()
	require.NoError(t, err, "Wait returns at once for a holder that died with the previous process")
	assert.Equal(t, idem.StateInProgress, rec.State)
	for i := 0; i < 20; i++ {
		key := fmt.Sprintf("k%d", i)
		l, rec, err := s.Begin(ctx, key, []byte("fp"))
		require.NoError(t, err, key)
		if i%2 == 0 {
			assert.Nil(t, l, "%s: finished, replayed", key)
			assert.Equal(t, "done", string(rec.Response))
			continue
		}
		require.NotNil(t, l, "%s: free at once", key)
		assert.Greater(t, l.Token(), tokens[key], "%s: fencing tokens still grow", key)
		assert.Equal(t, 2, rec.Attempts)
		// The new holder is alive: another Begin is refused.
		_, _, err = s.Begin(ctx, key, []byte("fp"))
		require.ErrorIs(t, err, idem.ErrInProgress)
		require.NoError(t, l.Complete(ctx, []byte("second")))
	}
}
