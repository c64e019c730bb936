package badgerkv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Each fault test runs its faulty part in a child process (this test
// binary again, with faultChildEnv naming the test), so that a crash, a
// signal or a hang shows as the child's exit status instead of taking the
// test run down.
const faultChildEnv = "BADGERKV_FAULT_CHILD"

// inChild reports whether this process is the child of test t.
func inChild(t *testing.T) bool { return os.Getenv(faultChildEnv) == t.Name() }

// runChild runs test t again in a child process with env added, as the
// user uid when uid >= 0, and returns its output after checking that it
// exited 0 on its own: no signal, no panic, no failed assertion, within
// a minute.
func runChild(t *testing.T, uid int, env ...string) string {
	t.Helper()
	bin, err := os.Executable()
	require.NoError(t, err)
	if uid >= 0 {
		// The go test binary lives in a directory only its owner reads.
		dir, err := os.MkdirTemp("", "faultbin")
		require.NoError(t, err)
		t.Cleanup(func() { os.RemoveAll(dir) })
		require.NoError(t, os.Chmod(dir, 0o755))
		data, err := os.ReadFile(bin)
		require.NoError(t, err)
		bin = filepath.Join(dir, "child.test")
		require.NoError(t, os.WriteFile(bin, data, 0o755))
	}
	cmd := exec.Command(bin, "-test.run=^"+t.Name()+"$", "-test.v", "-test.timeout=1m")
	cmd.Env = append(append(os.Environ(), faultChildEnv+"="+t.Name(), "HOME=/tmp", "GOCACHE=/tmp"), env...)
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			t.Fatalf("child killed by signal %v:\n%s", ws.Signal(), out.String())
		}
		t.Fatalf("child exited %d:\n%s", ee.ExitCode(), out.String())
	}
	require.NoError(t, err, out.String())
	return out.String()
}

// mountTmpfs mounts a tmpfs of size bytes on a fresh directory, or skips
// the test where mounting is not permitted.
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "faultfs")
	require.NoError(t, err)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0777", size)); err != nil {
		os.Remove(dir)
		t.Skipf("this test needs a small file system of its own: mounting a tmpfs is not permitted here (%v); run it as root", err)
	}
	t.Cleanup(func() {
		_ = syscall.Unmount(dir, syscall.MNT_DETACH)
		os.Remove(dir)
	})
	return dir
}

// sums returns the SHA-256 of every file under dir, by path.
func sums(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		m[path] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	}))
	return m
}

func expiry() time.Time { return time.Now().Add(time.Hour) }

// countPresent opens dir and returns how many of keys key-0..key-n-1 hold
// their value.
func countPresent(t *testing.T, dir string, n int) int {
	t.Helper()
	b, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	defer func() { require.NoError(t, b.Close()) }()
	found := 0
	for i := 0; i < n; i++ {
		v, err := b.Load(context.Background(), fmt.Sprint("key-", i))
		require.NoError(t, err)
		if v != nil {
			found++
		}
	}
	return found
}

var ackedRe = regexp.MustCompile(`acked=(\d+)`)

// A disk that fills up refuses writes with ErrNoSpace before Badger's
// mapped writes could fault, goes on serving reads, and takes writes
// again once space is freed, without a restart. Nothing acknowledged is
// lost.
func TestFaultDiskFull(t *testing.T) {
	if inChild(t) {
		diskFullChild(t, os.Getenv("FAULT_DIR"))
		return
	}
	mnt := mountTmpfs(t, 256<<20)
	out := runChild(t, -1, "FAULT_DIR="+mnt)
	m := ackedRe.FindStringSubmatch(out)
	require.NotNil(t, m, out)
	acked, _ := strconv.Atoi(m[1])
	assert.Equal(t, acked, countPresent(t, filepath.Join(mnt, "data"), acked), "acknowledged records after reopen")
}

func diskFullChild(t *testing.T, mnt string) {
	ctx := context.Background()
	dir := filepath.Join(mnt, "data")
	b, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	// Fill the disk up to a little more than the reserve.
	free := b.DiskFree()
	filler := filepath.Join(mnt, "filler")
	require.NoError(t, os.WriteFile(filler, make([]byte, free-DefaultReserve-8<<20), 0o600))
	value := bytes.Repeat([]byte("v"), 64<<10)
	acked := 0
	var werr error
	for i := 0; i < 10_000; i++ {
		if _, _, werr = b.CompareAndSwap(ctx, fmt.Sprint("key-", i), nil, value, expiry(), true); werr != nil {
			break
		}
		acked++
	}
	require.ErrorIs(t, werr, ErrNoSpace)
	require.NotErrorIs(t, werr, ErrFailed)
	t.Logf("refused after %d writes: %v", acked, werr)
	v, err := b.Load(ctx, "key-0")
	require.NoError(t, err, "reads go on")
	require.Equal(t, value, v)
	require.ErrorIs(t, b.Delete(ctx, "key-0"), ErrNoSpace)

	require.NoError(t, os.Remove(filler))
	time.Sleep(2 * spaceCacheFor)
	for i := acked; i < acked+10; i++ {
		_, _, err := b.CompareAndSwap(ctx, fmt.Sprint("key-", i), nil, value, expiry(), true)
		require.NoError(t, err, "writes come back once space is freed")
	}
	acked += 10
	require.NoError(t, b.Close())
	fmt.Printf("acked=%d\n", acked)
}

// A data directory that becomes unwritable while the store runs (the
// process is not root, so permissions hold) makes Badger fail to create
// its next memtable. The DB enters the failed state: every later call
// returns ErrFailed saying why, without calling Badger (which would
// dereference its nil memtable), and Close returns within seconds. A
// reopen finds everything acknowledged.
func TestFaultUnwritableDir(t *testing.T) {
	if inChild(t) {
		unwritableChild(t, os.Getenv("FAULT_DIR"))
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("runs its child as user nobody, which needs root")
	}
	parent, err := os.MkdirTemp("", "faultperm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(parent) })
	require.NoError(t, os.Chmod(parent, 0o777))
	dir := filepath.Join(parent, "data")
	require.NoError(t, os.Mkdir(dir, 0o755))
	require.NoError(t, os.Chown(dir, 65534, 65534))
	start := time.Now()
	out := runChild(t, 65534, "FAULT_DIR="+dir)
	t.Logf("child took %v", time.Since(start))
	m := ackedRe.FindStringSubmatch(out)
	require.NotNil(t, m, out)
	acked, _ := strconv.Atoi(m[1])
	require.NoError(t, os.Chmod(dir, 0o755))
	assert.Equal(t, acked, countPresent(t, dir, acked), "acknowledged records after reopen")
}

func unwritableChild(t *testing.T, dir string) {
	ctx := context.Background()
	b, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	closeWait = 3 * time.Second
	value := bytes.Repeat([]byte("v"), 1<<10)
	acked := 0
	for ; acked < 100; acked++ {
		_, _, err := b.CompareAndSwap(ctx, fmt.Sprint("key-", acked), nil, value, expiry(), true)
		require.NoError(t, err)
	}
	require.NoError(t, os.Chmod(dir, 0o555))
	var werr error
	for i := acked; i < 100_000; i++ {
		if _, _, werr = b.CompareAndSwap(ctx, fmt.Sprint("key-", i), nil, value, expiry(), i%2 == 0); werr != nil {
			break
		}
		if i%2 == 0 {
			acked = i + 1 // every write before a durable one is durable too
		}
	}
	fmt.Printf("acked=%d\n", acked)
	require.ErrorIs(t, werr, ErrFailed)
	t.Logf("write failed: %v", werr)
	_, err = b.Load(ctx, "key-1")
	require.ErrorIs(t, err, ErrFailed)
	_, _, err = b.CompareAndSwap(ctx, "another", nil, value, expiry(), true)
	require.ErrorIs(t, err, ErrFailed)
	require.ErrorIs(t, b.Delete(ctx, "key-1"), ErrFailed)
	require.ErrorIs(t, b.Scan(ctx, "", func(string, []byte) error { return nil }), ErrFailed)
	start := time.Now()
	require.ErrorIs(t, b.Close(), ErrFailed)
	require.Less(t, time.Since(start), 10*time.Second)
}

// damage builds a store of n records in a fresh directory, closes it, and
// returns the directory: its tables hold every record.
func damaged(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	b, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	value := bytes.Repeat([]byte("v"), 1<<10)
	for i := 0; i < n; i++ {
		_, _, err := b.CompareAndSwap(context.Background(), fmt.Sprint("key-", i), nil, value, expiry(), false)
		require.NoError(t, err)
	}
	require.NoError(t, b.Close())
	return dir
}

func tables(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.sst"))
	require.NoError(t, err)
	require.NotEmpty(t, m)
	return m
}

// Damage Open must refuse, read-only and read-write alike, with an error
// wrapping ErrCorrupt that names the file, changing no byte.
func TestFaultDamageRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string) string // returns the file the error must name
	}{
		{"manifest deleted", func(t *testing.T, dir string) string {
			require.NoError(t, os.Remove(filepath.Join(dir, "MANIFEST")))
			return "MANIFEST"
		}},
		{"manifest emptied", func(t *testing.T, dir string) string {
			require.NoError(t, os.Truncate(filepath.Join(dir, "MANIFEST"), 0))
			return "MANIFEST"
		}},
		{"manifest cut in its last change", func(t *testing.T, dir string) string {
			m := filepath.Join(dir, "MANIFEST")
			st, err := os.Stat(m)
			require.NoError(t, err)
			require.NoError(t, os.Truncate(m, st.Size()-3))
			return "MANIFEST"
		}},
		{"table truncated", func(t *testing.T, dir string) string {
			sst := tables(t, dir)[0]
			st, err := os.Stat(sst)
			require.NoError(t, err)
			require.NoError(t, os.Truncate(sst, st.Size()/2))
			return filepath.Base(sst)
		}},
		{"table deleted", func(t *testing.T, dir string) string {
			sst := tables(t, dir)[0]
			require.NoError(t, os.Remove(sst))
			return filepath.Base(sst)
		}},
		{"table footer flipped", func(t *testing.T, dir string) string {
			sst := tables(t, dir)[0]
			f, err := os.OpenFile(sst, os.O_RDWR, 0)
			require.NoError(t, err)
			st, _ := f.Stat()
			var c [1]byte
			_, err = f.ReadAt(c[:], st.Size()-20)
			require.NoError(t, err)
			c[0] ^= 0x40
			_, err = f.WriteAt(c[:], st.Size()-20)
			require.NoError(t, err)
			require.NoError(t, f.Close())
			return filepath.Base(sst)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if inChild(t) {
				dir := os.Getenv("FAULT_DIR")
				for _, ro := range []bool{true, false} {
					_, err := Open(Config{Dir: dir, ReadOnly: ro})
					require.ErrorIs(t, err, ErrCorrupt, "read-only %v", ro)
					require.ErrorContains(t, err, os.Getenv("FAULT_FILE"))
				}
				return
			}
			dir := damaged(t, 5000)
			file := tc.damage(t, dir)
			before := sums(t, dir)
			runChild(t, -1, "FAULT_DIR="+dir, "FAULT_FILE="+file)
			assert.Equal(t, before, sums(t, dir), "Open changed the damaged directory")
		})
	}
}

// A read-only open changes no byte of a directory whose process was
// killed: neither the write-ahead log Badger would cut nor a table left
// unlisted by a crash mid-flush, which Badger would delete. It fails with
// ErrNeedsRecovery; a read-write open then recovers every record.
func TestFaultReadOnlyAfterCrash(t *testing.T) {
	if inChild(t) {
		dir := os.Getenv("FAULT_DIR")
		if os.Getenv("FAULT_KILL") != "" {
			b, err := Open(Config{Dir: dir})
			require.NoError(t, err)
			value := bytes.Repeat([]byte("v"), 1<<10)
			for i := 0; i < 2000; i++ {
				_, _, err := b.CompareAndSwap(context.Background(), fmt.Sprint("key-", i), nil, value, expiry(), true)
				require.NoError(t, err)
			}
			os.Exit(0) // never closed, as a kill leaves it
		}
		_, err := Open(Config{Dir: dir, ReadOnly: true})
		require.ErrorIs(t, err, ErrNeedsRecovery)
		return
	}
	dir := damaged(t, 3000) // tables for keys 0..2999
	runChild(t, -1, "FAULT_DIR="+dir, "FAULT_KILL=1")
	// A leftover of a crash during a flush: a table the MANIFEST does
	// not list.
	sst := tables(t, dir)[0]
	src, err := os.Open(sst)
	require.NoError(t, err)
	dst, err := os.Create(filepath.Join(dir, "999999.sst"))
	require.NoError(t, err)
	_, err = io.Copy(dst, src)
	require.NoError(t, err)
	src.Close()
	dst.Close()
	before := sums(t, dir)
	runChild(t, -1, "FAULT_DIR="+dir)
	assert.Equal(t, before, sums(t, dir), "a read-only open changed the directory")
	assert.Equal(t, 3000, countPresent(t, dir, 3000))
}

// BenchmarkSpaceCheck measures the free-space check every write makes,
// beside a direct statfs (what an uncached check would cost).
func BenchmarkSpaceCheck(b *testing.B) {
	dir := b.TempDir()
	b.Run("cached", func(b *testing.B) {
		g := newSpaceGuard(dir, 1)
		b.ReportAllocs()
		for b.Loop() {
			if err := g.check(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("statfs", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := freeSpace(dir); err != nil {
				b.Fatal(err)
			}
		}
	})
}
