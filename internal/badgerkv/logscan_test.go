package badgerkv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// runChildKilled is runChild for a child that ends by SIGKILL, as a
// crash leaves a store: it checks that the child was killed by it.
func runChildKilled(t *testing.T, env ...string) string {
	t.Helper()
	bin, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(bin, "-test.run=^"+t.Name()+"$", "-test.v", "-test.timeout=1m")
	cmd.Env = append(append(os.Environ(), faultChildEnv+"="+t.Name(), "HOME=/tmp", "GOCACHE=/tmp"), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	var ee *exec.ExitError
	require.True(t, errors.As(err, &ee), "child was not killed (%v):\n%s", err, out.String())
	ws, ok := ee.Sys().(syscall.WaitStatus)
	require.True(t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child not killed by SIGKILL (%v):\n%s", err, out.String())
	return out.String()
}

// crashWrites is the child's part of crashed: it writes n durable
// records, then one that is not (the log's last transaction), and kills
// itself.
func crashWrites(t *testing.T, dir string, n int) {
	b, err := Open(Config{Dir: dir})
	require.NoError(t, err)
	ctx := context.Background()
	value := bytes.Repeat([]byte("v"), 1<<10)
	for i := 0; i < n; i++ {
		_, _, err := b.CompareAndSwap(ctx, fmt.Sprint("key-", i), nil, value, expiry(), true)
		require.NoError(t, err)
	}
	_, _, err = b.CompareAndSwap(ctx, "unacked", nil, value, expiry(), false)
	require.NoError(t, err)
	fmt.Printf("acked=%d\n", n)
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGKILL))
	select {}
}

// crashedRecords is how many durable records crashed writes.
const crashedRecords = 300

// crashed returns a directory whose writer wrote crashedRecords durable
// records, one more that is not durable, and was killed: its one .mem
// file holds them all. It also returns that file and the offsets of its
// entries.
func crashed(t *testing.T) (dir, mem string, offs []int64) {
	t.Helper()
	dir = t.TempDir()
	out := runChildKilled(t, "FAULT_DIR="+dir, "FAULT_CRASH=1")
	require.Contains(t, out, fmt.Sprintf("acked=%d", crashedRecords))
	mems, err := filepath.Glob(filepath.Join(dir, "*.mem"))
	require.NoError(t, err)
	require.Len(t, mems, 1)
	mem = mems[0]
	s := scanLog(mem)
	require.NoError(t, s.Err)
	require.Nil(t, s.Damage)
	require.Equal(t, crashedRecords+2, s.Writes, "writes replayed: the epoch of the open, the records and one more")
	return dir, mem, entryOffsets(t, mem, s.End)
}

// entryOffsets returns the offsets of the entries of the log at path
// before end.
func entryOffsets(t *testing.T, path string, end int64) []int64 {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	st, err := f.Stat()
	require.NoError(t, err)
	r := newLogReader(f, st.Size())
	var offs []int64
	for off := int64(logHeaderSize); off < end; {
		e, stop, err := r.entry(off)
		require.NoError(t, err)
		require.Nil(t, stop)
		offs = append(offs, off)
		off += e.size
	}
	return offs
}

// keysPresent returns which of key-0..key-n-1 dir holds, opened with cfg.
func keysPresent(t *testing.T, cfg Config, n int) []bool {
	t.Helper()
	b, err := Open(cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, b.Close()) }()
	found := make([]bool, n)
	for i := range found {
		v, err := b.Load(context.Background(), fmt.Sprint("key-", i))
		require.NoError(t, err)
		found[i] = v != nil
	}
	return found
}

func countTrue(found []bool) int {
	n := 0
	for _, f := range found {
		if f {
			n++
		}
	}
	return n
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

// The torn end a crash leaves (here the last transaction, which was not
// durable, cut in its middle and followed by zeros or by garbage) is the
// normal end of a log: a read-write open replays every acknowledged
// write without an option.
func TestLogTornEnd(t *testing.T) {
	for _, tc := range []struct {
		name string
		tear func(t *testing.T, mem string, last, end int64)
	}{
		{"zeroed", func(t *testing.T, mem string, last, end int64) {
			writeAt(t, mem, last+(end-last)/2, make([]byte, 64<<10))
		}},
		{"garbage", func(t *testing.T, mem string, last, end int64) {
			g := make([]byte, 700)
			for i := range g {
				g[i] = byte(i*7 + 13)
			}
			writeAt(t, mem, last+5, g)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if inChild(t) {
				crashWrites(t, os.Getenv("FAULT_DIR"), crashedRecords)
				return
			}
			dir, mem, offs := crashed(t)
			// The last two entries: the unacknowledged write and its
			// transaction's end marker.
			last := offs[len(offs)-2]
			tc.tear(t, mem, last, scanLog(mem).End)
			s := scanLog(mem)
			require.NoError(t, s.Err)
			require.Nil(t, s.Damage, "a torn end is not damage")
			assert.Equal(t, crashedRecords+1, s.Writes, "the epoch of the open and the records")
			assert.Equal(t, last, s.End)
			assert.Equal(t, crashedRecords, countTrue(keysPresent(t, Config{Dir: dir}, crashedRecords)), "acknowledged records after reopen")
		})
	}
}

// A bad entry in the middle of a write-ahead log, with valid ones after
// it, is refused by a read-write open with ErrCorrupt naming the file
// and what would be lost, and nothing changes; a read-only open refuses
// it too. With DiscardDamagedLog the open keeps what precedes the damage,
// discards the rest and logs it at Error level.
func TestLogDamageRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, mem string, off int64)
	}{
		{"bit flipped", func(t *testing.T, mem string, off int64) {
			// In the value of the entry at off.
			writeAt(t, mem, off+600, []byte{'v' ^ 0x08})
		}},
		{"length claims 4 GiB", func(t *testing.T, mem string, off int64) {
			// Same header length: meta, user meta, key length, then a
			// 5-byte value length of 2^32-1 and a 2-byte expiry of 0,
			// which a varint reader takes.
			f, err := os.Open(mem)
			require.NoError(t, err)
			h := make([]byte, maxEntryHeader)
			_, err = f.ReadAt(h, off)
			require.NoError(t, err)
			f.Close()
			n := 2
			for range 3 {
				_, k := binary.Uvarint(h[n:])
				n += k
			}
			require.Equal(t, 10, n, "the header of a 1 KiB value with an expiry")
			writeAt(t, mem, off+3, []byte{0xff, 0xff, 0xff, 0xff, 0x0f, 0x80, 0x00})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if inChild(t) {
				damageChild(t)
				return
			}
			dir, mem, offs := crashed(t)
			i := len(offs) / 4 * 2 // a write, not an end marker
			off := offs[i]
			tc.damage(t, mem, off)
			s := scanLog(mem)
			require.NotNil(t, s.Damage)
			t.Logf("%s: %v", filepath.Base(mem), s.Damage)
			assert.Equal(t, off, s.Damage.Offset)
			assert.Equal(t, off, s.End, "the entry before it ends a transaction")
			assert.Equal(t, i, 2*s.Writes, "one write and one end marker a transaction")
			assert.Equal(t, crashedRecords+2-s.Writes-1, s.Damage.WritesAfter, "every write after the damaged one")
			before := sums(t, dir)
			env := []string{"FAULT_DIR=" + dir, "FAULT_FILE=" + filepath.Base(mem), "FAULT_OFFSET=" + strconv.FormatInt(off, 10)}
			runChild(t, -1, env...)
			require.Equal(t, before, sums(t, dir), "a refused open changed the directory")

			out := runChild(t, -1, append(env, "FAULT_DISCARD=1")...)
			// The writes before the damage: the epoch of the open, then records.
			assert.Contains(t, out, fmt.Sprintf("kept=%d", s.Writes-1))
			assert.Equal(t, s.Writes-1, countTrue(keysPresent(t, Config{Dir: dir}, crashedRecords)), "after the damaged log was cut")
		})
	}
}

// damageChild is the child's part of TestLogDamageRefused: it writes
// the crashed store, or opens the damaged one.
func damageChild(t *testing.T) {
	if os.Getenv("FAULT_CRASH") != "" {
		crashWrites(t, os.Getenv("FAULT_DIR"), crashedRecords)
		return
	}
	dir, file := os.Getenv("FAULT_DIR"), os.Getenv("FAULT_FILE")
	for _, ro := range []bool{false, true} {
		_, err := Open(Config{Dir: dir, ReadOnly: ro})
		require.ErrorIs(t, err, ErrCorrupt, "read-only %v", ro)
		require.ErrorContains(t, err, file)
		require.ErrorContains(t, err, "offset "+os.Getenv("FAULT_OFFSET"))
		t.Logf("read-only %v: %v", ro, err)
	}
	_, err := Open(Config{Dir: dir})
	require.ErrorContains(t, err, "valid writes")
	if os.Getenv("FAULT_DISCARD") == "" {
		return
	}
	var logs bytes.Buffer
	found := keysPresent(t, Config{Dir: dir, DiscardDamagedLog: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, crashedRecords)
	t.Logf("log:\n%s", logs.String())
	require.Contains(t, logs.String(), "level=ERROR")
	require.Contains(t, logs.String(), file)
	n := countTrue(found)
	fmt.Printf("kept=%d\n", n)
	for i := range found {
		require.Equal(t, i < n, found[i], "key-%d: the records before the damage, and none after", i)
	}
}

// testEntry encodes an entry as Badger's logFile.encodeEntry does.
func testEntry(meta byte, key, value []byte, version uint64) []byte {
	k := binary.BigEndian.AppendUint64(append([]byte(nil), key...), math.MaxUint64-version)
	b := []byte{meta, 0}
	b = binary.AppendUvarint(b, uint64(len(k)))
	b = binary.AppendUvarint(b, uint64(len(value)))
	b = binary.AppendUvarint(b, 0)
	b = append(append(b, k...), value...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// testTxn encodes a transaction of one write, as Badger writes it to a
// memtable's log.
func testTxn(key, value []byte, version uint64) []byte {
	b := testEntry(metaTxn, key, value, version)
	return append(b, testEntry(metaFinTxn, []byte("!badger!txn"), []byte(strconv.FormatUint(version, 10)), version)...)
}

// writeLog writes a log file of logHeaderSize zero bytes, then body,
// then zeros up to size (a sparse tail, as Badger preallocates).
func writeLog(t testing.TB, path string, body []byte, size int64) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	_, err = f.WriteAt(body, logHeaderSize)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(max(size, int64(logHeaderSize+len(body)))))
	require.NoError(t, f.Close())
}

// A damaged length claiming 4 GiB is bounded by the file: the scan
// allocates nothing for it and finds the entries after it. Badger would
// allocate 12 GiB to read it.
func TestLogScanHugeLength(t *testing.T) {
	dir := t.TempDir()
	var body []byte
	for i := range 10 {
		body = append(body, testTxn([]byte(fmt.Sprint("rkey-", i)), bytes.Repeat([]byte("v"), 100), uint64(i+1))...)
	}
	off := int64(logHeaderSize + len(body))
	bad := []byte{metaTxn, 0, 12}
	bad = binary.AppendUvarint(bad, math.MaxUint32)
	bad = append(bad, 0, 'x', 'y', 'z')
	body = append(body, bad...)
	for i := range 5 {
		body = append(body, testTxn([]byte(fmt.Sprint("rlater-", i)), bytes.Repeat([]byte("w"), 100), uint64(i+20))...)
	}
	path := filepath.Join(dir, "00001.mem")
	writeLog(t, path, body, 24<<20)

	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	start := time.Now()
	s := scanLog(path)
	took := time.Since(start)
	runtime.ReadMemStats(&ms1)
	require.NoError(t, s.Err)
	require.NotNil(t, s.Damage)
	assert.Equal(t, off, s.Damage.Offset)
	assert.Equal(t, off, s.End)
	assert.Equal(t, 10, s.Writes)
	assert.Equal(t, 5, s.Damage.WritesAfter)
	assert.Less(t, ms1.TotalAlloc-ms0.TotalAlloc, uint64(4<<20), "bytes allocated by the scan")
	assert.Less(t, took, 2*time.Second)
	t.Logf("%v in %v, %d bytes allocated", s.Damage, took, ms1.TotalAlloc-ms0.TotalAlloc)

	// With nothing valid after it, the claim is still damage: no torn
	// write leaves a length past the end of the file.
	writeLog(t, path, body[:off-logHeaderSize+int64(len(bad))], 24<<20)
	s = scanLog(path)
	require.NotNil(t, s.Damage)
	assert.Equal(t, 0, s.Damage.WritesAfter)
	assert.Contains(t, s.Damage.Reason, "more than the file holds")
}

// What the scan tells apart, on logs written here in Badger's format.
func TestLogScanCases(t *testing.T) {
	var good []byte
	var offs []int
	for i := range 20 {
		offs = append(offs, logHeaderSize+len(good))
		good = append(good, testTxn([]byte(fmt.Sprint("rkey-", i)), bytes.Repeat([]byte{byte(i)}, 500), uint64(i+1))...)
	}
	end := int64(logHeaderSize + len(good))
	for _, tc := range []struct {
		name    string
		body    func() []byte
		damaged bool
		end     int64
		writes  int
	}{
		{"clean", func() []byte { return good }, false, end, 20},
		{"empty", func() []byte { return nil }, false, logHeaderSize, 0},
		{"torn entry", func() []byte { return append(bytes.Clone(good), testTxn([]byte("rtorn"), []byte("x"), 99)[:15]...) }, false, end, 20},
		{"torn transaction", func() []byte {
			return append(bytes.Clone(good), testEntry(metaTxn, []byte("rtorn"), []byte("x"), 99)...)
		}, false, end, 20},
		{"garbage end", func() []byte { return append(bytes.Clone(good), bytes.Repeat([]byte{0xa5, 0x17, 0x3c}, 3000)...) }, false, end, 20},
		{"bit flip", func() []byte {
			b := bytes.Clone(good)
			b[offs[7]-logHeaderSize+40] ^= 1
			return b
		}, true, int64(offs[7]), 7},
		{"zeroed page", func() []byte {
			b := bytes.Clone(good)
			from := (offs[3]/4096 + 1) * 4096
			clear(b[from-logHeaderSize : from-logHeaderSize+4096])
			return b
		}, true, -1, -1},
		{"end marker lost", func() []byte {
			b := bytes.Clone(good)
			fin := offs[5] + len(testEntry(metaTxn, []byte("rkey-5"), bytes.Repeat([]byte{5}, 500), 6))
			return append(b[:fin-logHeaderSize:fin-logHeaderSize], b[offs[6]-logHeaderSize:]...)
		}, true, int64(offs[5]), 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "00001.mem")
			writeLog(t, path, tc.body(), 1<<20)
			s := scanLog(path)
			require.NoError(t, s.Err)
			if tc.damaged {
				require.NotNil(t, s.Damage)
				t.Logf("%v", s.Damage)
				assert.Positive(t, s.Damage.WritesAfter)
			} else {
				require.Nil(t, s.Damage, "%v", s.Damage)
			}
			if tc.end >= 0 {
				assert.Equal(t, tc.end, s.End)
				assert.Equal(t, tc.writes, s.Writes)
			}
			if tc.name == "zeroed page" {
				assert.True(t, s.Damage.ZeroFilled)
			}
		})
	}
}

// BenchmarkScanLog measures the scan a read-write open makes of a full
// memtable log (1.75 MiB of 1 KiB writes in a 3.5 MiB file) and a full value
// log (64 MiB of 1 MiB values in a 128 MiB file), beside reading the same
// bytes.
func BenchmarkScanLog(b *testing.B) {
	dir := b.TempDir()
	mem := filepath.Join(dir, "00001.mem")
	var body []byte
	for i := 0; len(body) < memTableSize; i++ {
		body = append(body, testTxn([]byte(fmt.Sprint("rkey-", i)), bytes.Repeat([]byte("v"), 1<<10), uint64(i+1))...)
	}
	writeLog(b, mem, body, 2*memTableSize)
	vlog := filepath.Join(dir, "000001.vlog")
	body = body[:0]
	for i := 0; len(body) < 64<<20; i++ {
		body = append(body, testEntry(0, []byte(fmt.Sprint("rkey-", i)), bytes.Repeat([]byte("v"), 1<<20), uint64(i+1))...)
	}
	writeLog(b, vlog, body, 128<<20)
	for _, tc := range []struct{ name, path string }{{"mem=1.75MiB", mem}, {"vlog=64MiB", vlog}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s := scanLog(tc.path)
				if s.Err != nil || s.Damage != nil {
					b.Fatal(s.Err, s.Damage)
				}
			}
		})
		b.Run(tc.name+"/read", func(b *testing.B) {
			buf := make([]byte, logWindow)
			for b.Loop() {
				f, err := os.Open(tc.path)
				if err != nil {
					b.Fatal(err)
				}
				for off := int64(0); ; off += logWindow {
					if _, err := f.ReadAt(buf, off); err != nil {
						break
					}
				}
				f.Close()
			}
		})
	}
}
