package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/internal/badgerkv"
)

// crashedServe runs idem serve on a fresh directory, sends it n
// payments, and kills it: its write-ahead log holds them.
func crashedServe(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	addr := freeAddr(t)
	srv := exec.Command(bin, "serve", "-data", dir, "-addr", addr)
	require.NoError(t, srv.Start())
	killed := false
	t.Cleanup(func() {
		if !killed {
			srv.Process.Kill()
			srv.Wait()
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < n; {
		req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/payments", strings.NewReader(`{"amount":5000,"currency":"USD"}`))
		require.NoError(t, err)
		req.Header.Set("Idempotency-Key", "order-"+strconv.Itoa(i))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			require.True(t, i == 0 && time.Now().Before(deadline), "serve did not answer: %v", err)
			time.Sleep(20 * time.Millisecond)
			continue
		}
		resp.Body.Close()
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		i++
	}
	require.NoError(t, srv.Process.Kill())
	srv.Wait()
	killed = true
	return dir
}

// TestVerify: idem verify reads every record of a clean store and finds
// the corrupt one; on a crashed store it scans the logs and says that
// recovery is needed; a bit flipped in the middle of the write-ahead log
// is reported with its file and offset and a non-zero exit, and neither
// verify nor a refused recover changes a byte. recover
// -discard-damaged-log then opens it, keeping what precedes the damage.
func TestVerify(t *testing.T) {
	dir, _ := prepare(t) // holds one corrupt record, t3/bad
	sum := dirSums(t, dir)
	r := idemCmd(t, "", "verify", "-data", dir)
	require.Equal(t, 1, r.code, "%s\n%s", r.stdout, r.stderr)
	assert.Regexp(t, `records:\s+4 good, 0 expired, 1 corrupt`, r.stdout)
	assert.Contains(t, r.stdout, `"t3/bad"`)
	assert.Equal(t, sum, dirSums(t, dir), "verify changed the directory")
	s := open(t, dir) // holds it read-write
	r = idemCmd(t, "", "verify", "-data", dir)
	require.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "in use by a read-write process")
	require.NoError(t, s.Close())

	dir = crashedServe(t, 20)
	sum = dirSums(t, dir)
	r = idemCmd(t, "", "verify", "-data", dir, "-json")
	require.Equal(t, 0, r.code, "%s\n%s", r.stdout, r.stderr)
	var v verifyReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &v))
	assert.True(t, v.NeedsRecovery)
	assert.False(t, v.Damaged)
	var mem *verifyLog
	for i, l := range v.Logs {
		if filepath.Ext(l.File) == ".mem" {
			mem = &v.Logs[i]
		}
	}
	require.NotNil(t, mem, r.stdout)
	assert.Positive(t, mem.Writes)
	assert.Nil(t, mem.Damage)
	assert.Equal(t, sum, dirSums(t, dir), "verify changed a directory that needs recovery")

	// A bit flipped halfway through the log.
	path := filepath.Join(dir, mem.File)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	var c [1]byte
	_, err = f.ReadAt(c[:], mem.End/2)
	require.NoError(t, err)
	c[0] ^= 0x10
	_, err = f.WriteAt(c[:], mem.End/2)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	scans, err := badgerkv.ScanLogs(dir)
	require.NoError(t, err)
	var damage *badgerkv.LogDamage
	for _, s := range scans {
		if s.Damage != nil {
			damage = s.Damage
		}
	}
	require.NotNil(t, damage)
	sum = dirSums(t, dir)

	r = idemCmd(t, "", "verify", "-data", dir)
	require.Equal(t, 1, r.code, "%s\n%s", r.stdout, r.stderr)
	t.Logf("verify:\n%s%s", r.stdout, r.stderr)
	assert.Contains(t, r.stdout, mem.File)
	assert.Contains(t, r.stdout, fmt.Sprintf("DAMAGED at offset %d", damage.Offset))
	assert.Contains(t, r.stdout, fmt.Sprintf("%d valid writes", damage.WritesAfter))
	assert.Contains(t, r.stderr, "is damaged")
	r = idemCmd(t, "", "verify", "-data", dir, "-json")
	require.Equal(t, 1, r.code)
	v = verifyReport{}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &v))
	assert.True(t, v.Damaged)
	r = idemCmd(t, "", "recover", "-data", dir)
	require.Equal(t, 1, r.code, "%s\n%s", r.stdout, r.stderr)
	assert.Contains(t, r.stderr, mem.File)
	assert.Contains(t, r.stderr, "DiscardDamagedLog")
	assert.Equal(t, sum, dirSums(t, dir), "verify or a refused recover changed the directory")

	r = idemCmd(t, "", "recover", "-data", dir, "-discard-damaged-log")
	require.Equal(t, 0, r.code, "%s\n%s", r.stdout, r.stderr)
	assert.Contains(t, r.stderr, "level=ERROR")
	assert.Contains(t, r.stderr, mem.File)
	r = idemCmd(t, "", "verify", "-data", dir, "-json")
	require.Equal(t, 0, r.code, "%s\n%s", r.stdout, r.stderr)
	v = verifyReport{}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &v))
	require.NotNil(t, v.Records)
	assert.Positive(t, v.Records.Good)
	assert.Less(t, v.Records.Good, 20)
}
