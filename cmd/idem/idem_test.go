package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
	"github.com/idemdb/idem/idemprom"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/storeinternal"
)

// bin is the idem command, built once for all tests.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "idem-cmd-test-")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "idem")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		panic("go build: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// idemCmd runs the command with args and stdin.
func idemCmd(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return result{out.String(), errb.String(), code}
}

var ctx = context.Background()

// prepare writes a store in a fresh directory, with records made an hour
// ago by the real clock:
//
//	t1/done    completed, response "charge ch_1: 5000 USD"
//	t1/stuck   in progress, its 30s lease lapsed an hour ago (stale)
//	t2/live    in progress, lease live for another hour, but its holder
//	           (the process that wrote the store) has ended: a read-write
//	           open of the directory finds it stale and frees it
//	t2/retry   failed, retryable
//	t3/bad     corrupt bytes
func prepare(t *testing.T) (dir string, tokens map[string]uint64) {
	t.Helper()
	dir = t.TempDir()
	hourAgo := func() time.Time { return time.Now().Add(-time.Hour) }
	s, err := idem.Open(dir, &idem.Options{Now: hourAgo, GCInterval: -1})
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	tokens = map[string]uint64{}
	begin := func(c context.Context, key string) *idem.Lease {
		l, _, err := s.Begin(c, key, []byte("fp-"+key))
		require.NoError(t, err)
		require.NotNil(t, l)
		tokens[key] = l.Token()
		return l
	}
	require.NoError(t, begin(ctx, "t1/done").Complete(ctx, []byte("charge ch_1: 5000 USD")))
	begin(ctx, "t1/stuck")
	begin(idem.WithLeaseTTL(ctx, 2*time.Hour), "t2/live")
	require.NoError(t, begin(ctx, "t2/retry").Fail(ctx, nil, true))
	_, swapped, err := storeinternal.Backend(s).(idem.Backend).CompareAndSwap(ctx, "t3/bad", nil, []byte{0x9b, 0x02, 0xff}, time.Now().Add(time.Hour), false)
	require.NoError(t, err)
	require.True(t, swapped)
	return dir, tokens
}

// open opens dir for the test to check what the command did.
func open(t *testing.T, dir string) *idem.Store {
	t.Helper()
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func TestGet(t *testing.T) {
	dir, tokens := prepare(t)

	r := idemCmd(t, "", "get", "-data", dir, "t1/stuck")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "in-progress (STALE: the lease lapsed 59m")
	assert.Regexp(t, `token:\s+`+itoa(tokens["t1/stuck"]), r.stdout)
	assert.Regexp(t, `expires:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(in 23h0m\)`, r.stdout)
	assert.Regexp(t, `created:\s+.*\(1h0m ago\)`, r.stdout)

	r = idemCmd(t, "", "get", "-data", dir, "t1/done")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `response:     21 bytes "charge ch_1: 5000 USD"`)
	assert.Contains(t, r.stdout, "fingerprint:  "+hexOf("fp-t1/done"))

	r = idemCmd(t, "", "get", "-json", "-data", dir, "t1/done")
	require.Equal(t, 0, r.code, r.stderr)
	var j map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &j))
	assert.Equal(t, "Y2hhcmdlIGNoXzE6IDUwMDAgVVNE", j["response"], "base64 of the response")
	assert.Equal(t, "completed", j["state"])
	assert.Equal(t, float64(tokens["t1/done"]), j["token"])

	r = idemCmd(t, "", "get", "-data", dir, "nope")
	assert.Equal(t, 1, r.code)
	assert.Empty(t, r.stdout)
	assert.Contains(t, r.stderr, `idem get: idem: get "nope": record not found`)

	r = idemCmd(t, "", "get", "-data", dir, "t3/bad")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, `corrupt record: key "t3/bad"`)
	assert.Contains(t, r.stderr, "idem delete t3/bad")

	r = idemCmd(t, "", "get", "-data", dir)
	assert.Equal(t, 2, r.code, "a missing KEY is a usage error")
	r = idemCmd(t, "", "get", "-data", filepath.Join(dir, "missing"), "k")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "no store at")
}

func TestList(t *testing.T) {
	dir, _ := prepare(t)

	r := idemCmd(t, "", "list", "-data", dir)
	require.Equal(t, 0, r.code, r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 6, r.stdout)
	assert.Regexp(t, `^KEY\s+STATE\s+ATTEMPTS\s+TOKEN\s+AGE\s+LEASE\s+EXPIRES$`, lines[0])
	assert.Regexp(t, `^t1/stuck\s+in-progress\s+1\s+\d+\s+1h0m\s+STALE 59m\d+s ago\s+in 23h0m$`, lines[2])
	assert.Regexp(t, `^t2/live\s+in-progress\s+1\s+\d+\s+1h0m\s+live, in (59m\d+s|1h0m)\s+in 23h0m$`, lines[3])
	assert.Regexp(t, `^t3/bad\s+corrupt\s+-.*corrupt record`, lines[5])
	assert.Equal(t, strings.Index(lines[0], "STATE"), strings.Index(lines[2], "in-progress"), "columns are aligned")

	r = idemCmd(t, "", "list", "-stale", "-data", dir)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, []string{"t1/stuck"}, keysOf(r.stdout))

	r = idemCmd(t, "", "list", "-state", "in-progress", "-prefix", "t2/", "-data", dir)
	assert.Equal(t, []string{"t2/live"}, keysOf(r.stdout))
	r = idemCmd(t, "", "list", "-state", "corrupt", "-data", dir)
	assert.Equal(t, []string{"t3/bad"}, keysOf(r.stdout))
	r = idemCmd(t, "", "list", "-older-than", "2h", "-data", dir)
	assert.Equal(t, 0, r.code)
	assert.Empty(t, keysOf(r.stdout))
	assert.Contains(t, r.stderr, "no records match")
	r = idemCmd(t, "", "list", "-older-than", "30m", "-state", "failed", "-data", dir)
	assert.Equal(t, []string{"t2/retry"}, keysOf(r.stdout))

	r = idemCmd(t, "", "list", "-limit", "2", "-json", "-data", dir)
	require.Equal(t, 0, r.code, r.stderr)
	var keys []string
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var j idemadmin.Record
		require.NoError(t, json.Unmarshal([]byte(line), &j), line)
		keys = append(keys, j.Key)
	}
	assert.Equal(t, []string{"t1/done", "t1/stuck"}, keys)
	assert.Contains(t, r.stderr, "stopped after 2 records")

	r = idemCmd(t, "", "list", "-state", "done", "-data", dir)
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, `unknown state "done"`)
}

func TestStats(t *testing.T) {
	dir, _ := prepare(t)
	r := idemCmd(t, "", "stats", "-json", "-data", dir)
	require.Equal(t, 0, r.code, r.stderr)
	var st idemadmin.Stats
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
	assert.Equal(t, idemadmin.RecordCounts{InProgress: 2, Completed: 1, Failed: 1}, st.Records)
	assert.Equal(t, 1, st.Corrupt)
	assert.Equal(t, 1, st.StaleLeases)
	assert.InDelta(t, 3600, st.OldestInProgressSeconds, 60)
	assert.Positive(t, st.DiskBytes)
	assert.Positive(t, st.DiskFreeBytes)

	r = idemCmd(t, "", "stats", "-data", dir)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `records:\s+4`, r.stdout)
	assert.Regexp(t, `in-progress:\s+2\s+\(1 stale`, r.stdout)
	assert.Regexp(t, `corrupt:\s+1`, r.stdout)
	assert.Regexp(t, `oldest in-progress:\s+1h0m\s+\(key t1/stuck\)`, r.stdout)
	assert.Regexp(t, `disk free:\s+\d`, r.stdout)
	assert.NotContains(t, r.stdout, "lower bounds")
}

// A running server's census stops at its limit (idemadmin.Options.CensusLimit):
// stats says that its counts are lower bounds.
func TestStatsTruncated(t *testing.T) {
	dir, _ := prepare(t)
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	srv := httptest.NewServer(adminHandler(s, nil, &idemadmin.Options{CensusLimit: 2}))
	defer srv.Close()
	r := idemCmd(t, "", "stats", "-admin", strings.TrimPrefix(srv.URL, "http://"))
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `records:\s+2\n`, r.stdout)
	assert.Regexp(t, `census:\s+2 records read\s+\(it stopped at its limit: the counts above are lower bounds\)`, r.stdout)
	r = idemCmd(t, "", "stats", "-json", "-admin", strings.TrimPrefix(srv.URL, "http://"))
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"scanned":2,"truncated":true`)
}

func TestRelease(t *testing.T) {
	dir, tokens := prepare(t)

	r := idemCmd(t, "n\n", "release", "-data", dir, "t1/stuck")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stdout, "STALE")
	assert.Contains(t, r.stdout, "Release \"t1/stuck\" (token "+itoa(tokens["t1/stuck"])+")? ")
	assert.Contains(t, r.stderr, "not confirmed: nothing changed")

	r = idemCmd(t, "", "release", "-data", dir, "t1/stuck")
	assert.Equal(t, 1, r.code, "no answer on stdin is no")
	assert.Contains(t, r.stderr, "pass -yes")

	r = idemCmd(t, "", "release", "-yes", "-token", "7", "-data", dir, "t1/stuck")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "not the one pinned with -token 7")
	assert.Contains(t, r.stderr, "lease lost: the stored record is in-progress with token "+itoa(tokens["t1/stuck"])+", not in-progress with token 7")

	r = idemCmd(t, "", "release", "-data", dir, "t1/done")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "is completed, not in progress: nothing to release")

	r = idemCmd(t, "y\n", "release", "-data", dir, "t1/stuck")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "done")
	assert.Contains(t, r.stderr, `msg="idem: operator repair" key=t1/stuck op=release token=`+itoa(tokens["t1/stuck"]))

	s := open(t, dir)
	_, err := s.Get(ctx, "t1/stuck")
	assert.ErrorIs(t, err, idem.ErrNotFound)
	rec, err := s.Get(ctx, "t1/done")
	require.NoError(t, err)
	assert.Equal(t, idem.StateCompleted, rec.State, "other records untouched")
}

func TestFail(t *testing.T) {
	dir, tokens := prepare(t)
	r := idemCmd(t, "", "fail", "-yes", "-response", "card declined", "-data", dir, "t2/live")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "lease live")
	assert.Contains(t, r.stderr, "op=fail")
	assert.NotContains(t, r.stderr, "card declined", "responses are never logged")
	s := open(t, dir)
	rec, err := s.Get(ctx, "t2/live")
	require.NoError(t, err)
	assert.Equal(t, idem.StateFailed, rec.State)
	assert.False(t, rec.Retryable)
	assert.Equal(t, []byte("card declined"), rec.Response)
	assert.Equal(t, tokens["t2/live"], rec.Token)
}

func TestDelete(t *testing.T) {
	dir, _ := prepare(t)
	r := idemCmd(t, "yes\n", "delete", "-data", dir, "t3/bad")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "corrupt")
	assert.Contains(t, r.stderr, "op=delete state=corrupt")

	r = idemCmd(t, "", "release", "-data", dir, "t3/bad")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "record not found")

	r = idemCmd(t, "y\n", "delete", "-data", dir, "t1/done")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "COMPLETED: the next retry with this key runs the request AGAIN")

	r = idemCmd(t, "", "delete", "-yes", "-data", dir, "nope")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "record not found")

	r = idemCmd(t, "", "list", "-data", dir)
	assert.Equal(t, []string{"t1/stuck", "t2/live", "t2/retry"}, keysOf(r.stdout))
}

func TestPurge(t *testing.T) {
	dir, _ := prepare(t)
	r := idemCmd(t, "no\n", "purge", "-prefix", "t2/", "-data", dir)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stdout, `2 records under "t2/": 1 in-progress (1 stale), 0 completed, 1 failed, 0 corrupt`)
	r = idemCmd(t, "y\n", "purge", "-prefix", "t2/", "-data", dir)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "deleted 2 records")
	assert.Contains(t, r.stderr, "op=purge prefix=t2/ deleted=2")
	r = idemCmd(t, "", "list", "-data", dir)
	assert.Equal(t, []string{"t1/done", "t1/stuck", "t3/bad"}, keysOf(r.stdout))

	r = idemCmd(t, "", "purge", "-yes", "-data", dir)
	assert.Equal(t, 2, r.code, "purge without -prefix is refused")
}

func TestExportImport(t *testing.T) {
	dir, tokens := prepare(t)
	file := filepath.Join(t.TempDir(), "backup.jsonl")
	r := idemCmd(t, "", "export", "-o", file, "-data", dir)
	assert.Equal(t, 1, r.code, "a corrupt record makes the export incomplete")
	assert.Contains(t, r.stderr, `skipping "t3/bad"`)
	assert.Contains(t, r.stderr, "4 records written")
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Len(t, strings.Split(strings.TrimSpace(string(data)), "\n"), 4)

	// Into a directory that does not exist yet: import creates the store,
	// and every record comes back as it was.
	dst := filepath.Join(t.TempDir(), "restored")
	r = idemCmd(t, "", "import", "-data", dst, file)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "imported 4 records")
	s := open(t, dst)
	for key, tok := range tokens {
		rec, err := s.Get(ctx, key)
		require.NoError(t, err, key)
		assert.Equal(t, tok, rec.Token, key)
	}
	rec, err := s.Get(ctx, "t1/done")
	require.NoError(t, err)
	assert.Equal(t, []byte("charge ch_1: 5000 USD"), rec.Response)
	require.NoError(t, s.Close())

	// Into the source store, where t1/done was replaced: the live record stays.
	src := open(t, dir)
	require.NoError(t, src.ForceDelete(ctx, "t1/done", mustGet(t, src, "t1/done")))
	l, _, err := src.Begin(ctx, "t1/done", []byte("other"))
	require.NoError(t, err)
	require.NoError(t, l.Complete(ctx, []byte("newer")))
	require.NoError(t, src.Close())
	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	require.NoError(t, os.WriteFile(bad, append(data, []byte("{not json\n")...), 0o600))
	r = idemCmd(t, "", "import", "-data", dir, bad)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, `kept the live record stored under "t1/done"`)
	assert.Contains(t, r.stderr, "line 5:")
	assert.Contains(t, r.stdout, "kept 1 existing")
	src = open(t, dir)
	assert.Equal(t, []byte("newer"), mustGet(t, src, "t1/done").Response)
	require.NoError(t, src.Close())

	r = idemCmd(t, "", "import", "-overwrite", "-data", dir, file)
	require.Equal(t, 0, r.code, r.stderr)
	src = open(t, dir)
	assert.Equal(t, []byte("charge ch_1: 5000 USD"), mustGet(t, src, "t1/done").Response)
}

func TestGC(t *testing.T) {
	dir, _ := prepare(t)
	r := idemCmd(t, "", "gc", "-json", "-data", dir)
	require.Equal(t, 0, r.code, r.stderr)
	var rep map[string]float64
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	assert.Equal(t, 4.0, rep["records"])
	assert.Equal(t, 1.0, rep["corrupt"])
	assert.Equal(t, 2.0, rep["stale_leases"], "t1/stuck lapsed, and t2/live's holder has ended")
	assert.Positive(t, rep["disk_before"])
}

// TestLocked runs the command while the test holds the store open, as a
// server would: every command says so and points to the admin endpoint.
func TestLocked(t *testing.T) {
	dir, _ := prepare(t)
	open(t, dir)
	for _, args := range [][]string{
		{"get", "-data", dir, "t1/done"},
		{"list", "-data", dir},
		{"stats", "-data", dir},
		{"release", "-yes", "-data", dir, "t1/stuck"},
	} {
		r := idemCmd(t, "", args...)
		assert.Equal(t, 1, r.code, args)
		assert.Empty(t, r.stdout, args)
		assert.Contains(t, r.stderr, "is in use by another process", args)
		assert.Contains(t, r.stderr, "idem get -admin ADDR KEY", args)
	}
}

// TestAdmin serves adminHandler over loopback, as idem serve -admin does,
// and reads it with curl's equivalent and with the command's -admin flag.
func TestAdmin(t *testing.T) {
	dir, tokens := prepare(t)
	lat := idemprom.NewLatency()
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1, Observer: lat})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	reg := prometheus.NewRegistry()
	reg.MustRegister(lat, idemprom.NewCollector(s, nil))
	srv := httptest.NewServer(adminHandler(s, reg, nil))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	// The directory is held by the server: list goes through the endpoint.
	r := idemCmd(t, "", "list", "-admin", addr, "-stale")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, []string{"t1/stuck"}, keysOf(r.stdout))
	r = idemCmd(t, "", "list", "-admin", addr, "-state", "corrupt", "-json")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `"key":"t3/bad","state":"corrupt"`)
	r = idemCmd(t, "", "list", "-admin", addr, "-limit", "2")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Len(t, keysOf(r.stdout), 2)
	assert.Contains(t, r.stderr, "stopped after 2 records")
	r = idemCmd(t, "", "list", "-admin", addr, "-prefix", "t2/")
	require.Equal(t, 0, r.code, r.stderr)
	assert.ElementsMatch(t, []string{"t2/live", "t2/retry"}, keysOf(r.stdout))

	// Repairs are off unless asked for.
	r = idemCmd(t, "", "release", "-admin", addr, "-yes", "t1/stuck")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "repairs are off")
	assert.Equal(t, idem.StateInProgress, mustGet(t, s, "t1/stuck").State)

	r = idemCmd(t, "", "get", "-admin", addr, "t1/stuck")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "STALE")
	assert.Contains(t, r.stdout, itoa(tokens["t1/stuck"]))

	r = idemCmd(t, "", "get", "-admin", addr, "nope")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "record not found")

	r = idemCmd(t, "", "stats", "-admin", addr)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `in-progress:\s+2`, r.stdout)
	assert.Regexp(t, `get hits:\s+3`, r.stdout, "live counters: the gets above (release reads first)")
	assert.Regexp(t, `get misses:\s+1`, r.stdout)

	st, err := adminClient(srv.URL).Stats(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, 1, st.Corrupt)
	require.NotNil(t, st.Counters)
	assert.Equal(t, uint64(3), st.Counters.Hits)

	resp, err := srv.Client().Get(srv.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	var body bytes.Buffer
	_, err = body.ReadFrom(resp.Body)
	require.NoError(t, err)
	assert.Contains(t, body.String(), `idem_records{state="in-progress"} 2`)
	assert.Contains(t, body.String(), `idem_operation_duration_seconds_count{op="get",outcome="hit"} 3`)

	resp, err = srv.Client().Post(srv.URL+"/admin/stats", "text/plain", nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, 405, resp.StatusCode, "read-only")
}

// TestAdminRepairs repairs a store held by a running server through its
// admin endpoint, with repairs on: each repair is fenced on the record
// shown, so one that changed meanwhile is refused and nothing changes.
func TestAdminRepairs(t *testing.T) {
	dir, tokens := prepare(t)
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	srv := httptest.NewServer(adminHandler(s, nil, &idemadmin.Options{Repairs: true}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	// A token that is not the record's: refused, and nothing changes.
	r := idemCmd(t, "", "release", "-admin", addr, "-yes", "-token", "7", "t1/stuck")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "not the one pinned with -token 7")
	assert.Contains(t, r.stderr, "lease lost: the stored record is in-progress with token "+itoa(tokens["t1/stuck"])+", not in-progress with token 7")
	assert.Equal(t, idem.StateInProgress, mustGet(t, s, "t1/stuck").State)

	r = idemCmd(t, "n\n", "release", "-admin", addr, "t1/stuck")
	assert.Equal(t, 1, r.code, "declined")
	assert.Equal(t, idem.StateInProgress, mustGet(t, s, "t1/stuck").State)

	r = idemCmd(t, "y\n", "release", "-admin", addr, "t1/stuck")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "done")
	_, err = s.Get(ctx, "t1/stuck")
	assert.ErrorIs(t, err, idem.ErrNotFound, "released")

	r = idemCmd(t, "", "fail", "-admin", addr, "-yes", "-response", "declined by operator", "t2/live")
	require.Equal(t, 0, r.code, r.stderr)
	rec := mustGet(t, s, "t2/live")
	assert.Equal(t, idem.StateFailed, rec.State)
	assert.Equal(t, "declined by operator", string(rec.Response))
	assert.False(t, rec.Retryable)

	r = idemCmd(t, "", "fail", "-admin", addr, "-yes", "t1/done")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "not in progress")

	r = idemCmd(t, "", "release", "-admin", addr, "-yes", "t3/bad")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "cannot be read")
	r = idemCmd(t, "", "delete", "-admin", addr, "-yes", "t3/bad")
	require.Equal(t, 0, r.code, r.stderr)
	_, err = s.Get(ctx, "t3/bad")
	assert.ErrorIs(t, err, idem.ErrNotFound, "the corrupt record is gone")

	// The server fences on the token it is sent: a record that changed
	// between the look and the repair is left alone.
	err = adminClient(addr).ForceDelete(ctx, "t1/done", &idem.Record{State: idem.StateCompleted, Token: tokens["t1/done"] + 1})
	require.ErrorIs(t, err, idem.ErrLeaseLost)
	var changed *idem.ChangedError
	require.ErrorAs(t, err, &changed)
	assert.Equal(t, tokens["t1/done"], changed.Stored.Token, "the error carries the stored record")
	assert.Contains(t, err.Error(), "lease lost: the stored record is completed with token "+itoa(tokens["t1/done"]))
	assert.Equal(t, idem.StateCompleted, mustGet(t, s, "t1/done").State)

	r = idemCmd(t, "", "delete", "-admin", addr, "-yes", "t1/done")
	require.Equal(t, 0, r.code, r.stderr)
	_, err = s.Get(ctx, "t1/done")
	assert.ErrorIs(t, err, idem.ErrNotFound)

	r = idemCmd(t, "", "delete", "-admin", addr, "-data", dir, "-yes", "t2/retry")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "mutually exclusive")
}

func mustGet(t *testing.T, s *idem.Store, key string) *idem.Record {
	t.Helper()
	rec, err := s.Get(ctx, key)
	require.NoError(t, err)
	return rec
}

// keysOf returns the first column of a list table, without its header.
func keysOf(table string) []string {
	var keys []string
	for i, line := range strings.Split(strings.TrimSpace(table), "\n") {
		if i == 0 || line == "" {
			continue
		}
		keys = append(keys, strings.Fields(line)[0])
	}
	return keys
}

func itoa(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func hexOf(s string) string {
	const digits = "0123456789abcdef"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		b.WriteByte(digits[s[i]>>4])
		b.WriteByte(digits[s[i]&15])
	}
	return b.String()
}

// TestAdminDeleteFencedOnState: the operator is shown an in-progress
// record and confirms its deletion; meanwhile the holder completes it,
// which keeps the token. The delete must be refused: deleting the
// completed record would make the next retry run the request again.
func TestAdminDeleteFencedOnState(t *testing.T) {
	s, err := idem.Open(t.TempDir(), &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	srv := httptest.NewServer(adminHandler(s, nil, &idemadmin.Options{Repairs: true}))
	defer srv.Close()
	client := adminClient(strings.TrimPrefix(srv.URL, "http://"))
	del := repairOp{name: "delete"}

	l, _, err := s.Begin(ctx, "t1/pay", []byte("fp"))
	require.NoError(t, err)
	shown, err := client.Get(ctx, "t1/pay")
	require.NoError(t, err)
	require.Equal(t, idem.StateInProgress, shown.State)

	require.NoError(t, l.Complete(ctx, []byte("charged")))
	err = del.apply(ctx, client, "t1/pay", shown)
	require.ErrorIs(t, err, idem.ErrLeaseLost)
	var changed *idem.ChangedError
	require.ErrorAs(t, err, &changed)
	assert.Equal(t, idem.StateCompleted, changed.Stored.State)
	rec := mustGet(t, s, "t1/pay")
	assert.Equal(t, idem.StateCompleted, rec.State, "the completed record is kept")
	assert.Equal(t, "charged", string(rec.Response))

	// A delete that names no state cannot be fenced against a completion.
	b, err := json.Marshal(idemadmin.RepairRequest{Token: l.Token()})
	require.NoError(t, err)
	resp, err := http.Post(srv.URL+"/admin/delete/"+url.PathEscape("t1/pay"), "application/json", bytes.NewReader(b))
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Contains(t, string(body), "state")
	assert.Equal(t, idem.StateCompleted, mustGet(t, s, "t1/pay").State)

	// With the state it was shown, the delete applies.
	shown = mustGet(t, s, "t1/pay")
	require.NoError(t, del.apply(ctx, client, "t1/pay", shown))
	_, err = s.Get(ctx, "t1/pay")
	assert.ErrorIs(t, err, idem.ErrNotFound)
}

// cutAfter passes the first n writes of a response through (a list
// writes one record a write), then aborts the connection, as a server
// that dies between two records does.
type cutAfter struct {
	http.ResponseWriter
	n int
}

func (c *cutAfter) Write(p []byte) (int, error) {
	if c.n == 0 {
		c.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	c.n--
	return c.ResponseWriter.Write(p)
}

// TestAdminListBrokenStream: a list whose stream breaks off must fail,
// not print the records that arrived and exit 0 as if that were all.
func TestAdminListBrokenStream(t *testing.T) {
	dir, _ := prepare(t)
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	h := adminHandler(s, nil, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&cutAfter{ResponseWriter: w, n: 2}, r)
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	for _, args := range [][]string{
		{"list", "-admin", addr, "-json"},
		{"list", "-admin", addr},
	} {
		r := idemCmd(t, "", args...)
		assert.Equal(t, 1, r.code, "%v: stdout %q", args, r.stdout)
		assert.Contains(t, r.stderr, "admin endpoint", args)
	}
}

// TestAfterCrash: a server killed without closing its store leaves a
// write-ahead log to replay, which a read-only open refuses. get, list,
// stats and export change no byte of the directory: they fail saying how
// to recover it, and work after idem recover.
func TestAfterCrash(t *testing.T) {
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
	var resp *http.Response
	for {
		req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/payments", strings.NewReader(`{"amount":5000,"currency":"USD"}`))
		require.NoError(t, err)
		req.Header.Set("Idempotency-Key", "order-1")
		if resp, err = http.DefaultClient.Do(req); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "serve did not answer: %v", err)
		time.Sleep(20 * time.Millisecond)
	}
	resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	require.NoError(t, srv.Process.Kill())
	srv.Wait()
	killed = true

	sum := dirSums(t, dir)
	for _, args := range [][]string{
		{"list", "-data", dir, "-json"},
		{"stats", "-data", dir, "-json"},
		{"export", "-data", dir},
	} {
		r := idemCmd(t, "", args...)
		require.Equal(t, 1, r.code, "%v: %s", args, r.stderr)
		assert.Contains(t, r.stderr, "idem recover -data", args)
	}
	assert.Equal(t, sum, dirSums(t, dir), "a read-only command changed the directory")
	r := idemCmd(t, "", "recover", "-data", dir)
	require.Equal(t, 0, r.code, r.stderr)
	for _, args := range [][]string{
		{"list", "-data", dir, "-json"},
		{"stats", "-data", dir, "-json"},
		{"export", "-data", dir},
	} {
		r := idemCmd(t, "", args...)
		require.Equal(t, 0, r.code, "%v: %s", args, r.stderr)
		assert.Contains(t, r.stdout, "completed", args)
	}
	r = idemCmd(t, "", "list", "-data", dir, "-json")
	var j idemadmin.Record
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &j))
	r = idemCmd(t, "", "get", "-data", dir, j.Key)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `state:\s+completed`, r.stdout)
}

// dirSums returns the SHA-256 of every file under dir, by path.
func dirSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		sums[path] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	}))
	return sums
}

// TestImportLongLine: a record too large for the importing store (its
// source allowed larger responses) is one bad line, named; the lines after
// it are still imported.
func TestImportLongLine(t *testing.T) {
	src, err := idem.Open(t.TempDir(), &idem.Options{GCInterval: -1, MaxResponseSize: 4 << 20})
	require.NoError(t, err)
	defer src.Close()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for i, key := range []string{"a", "big", "c"} {
		l, _, err := src.Begin(ctx, key, []byte("fp"))
		require.NoError(t, err)
		resp := []byte("ok")
		if i == 1 {
			resp = bytes.Repeat([]byte("x"), 3<<20)
		}
		require.NoError(t, l.Complete(ctx, resp))
		require.NoError(t, enc.Encode(idemadmin.FromRecord(mustGet(t, src, key))))
	}
	file := filepath.Join(t.TempDir(), "backup.jsonl")
	require.NoError(t, os.WriteFile(file, buf.Bytes(), 0o600))

	dst := filepath.Join(t.TempDir(), "dst")
	r := idemCmd(t, "", "import", "-data", dst, file)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "line 2:")
	assert.Contains(t, r.stdout, "imported 2 records")
	s := open(t, dst)
	for _, key := range []string{"a", "c"} {
		assert.Equal(t, "ok", string(mustGet(t, s, key).Response), key)
	}
}

// TestLongKeys: a service may allow keys longer than the default 255
// bytes (Options.MaxKeySize); the command must still read, repair and
// purge them.
func TestLongKeys(t *testing.T) {
	dir := t.TempDir()
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1, MaxKeySize: 1000})
	require.NoError(t, err)
	long := "t9/" + strings.Repeat("k", 400)
	for _, key := range []string{long, long + "-2", "t9/short"} {
		_, _, err := s.Begin(ctx, key, []byte("fp"))
		require.NoError(t, err)
	}
	require.NoError(t, s.Close())

	r := idemCmd(t, "", "get", "-data", dir, long)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `state:\s+in-progress`, r.stdout)
	r = idemCmd(t, "", "release", "-yes", "-data", dir, long)
	require.Equal(t, 0, r.code, r.stderr)
	r = idemCmd(t, "", "purge", "-yes", "-prefix", "t9/", "-data", dir)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "deleted 2 records")

	// Export and import carry them too.
	s, err = idem.Open(dir, &idem.Options{GCInterval: -1, MaxKeySize: 1000})
	require.NoError(t, err)
	_, _, err = s.Begin(ctx, long, []byte("fp"))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	file := filepath.Join(t.TempDir(), "backup.jsonl")
	r = idemCmd(t, "", "export", "-o", file, "-data", dir)
	require.Equal(t, 0, r.code, r.stderr)
	dst := filepath.Join(t.TempDir(), "dst")
	r = idemCmd(t, "", "import", "-data", dst, file)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "imported 1 records")
}

// TestAdminDotKeys: keys "." and ".." are valid, but as a URL path
// segment they are cleaned away; the command must still reach them.
func TestAdminDotKeys(t *testing.T) {
	s, err := idem.Open(t.TempDir(), &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	srv := httptest.NewServer(adminHandler(s, nil, &idemadmin.Options{Repairs: true}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	// "-" sorts first: a path cleaned to /admin/records lists it.
	_, _, err = s.Begin(ctx, "-", []byte("fp"))
	require.NoError(t, err)
	for _, key := range []string{".", ".."} {
		_, _, err := s.Begin(ctx, key, []byte("fp"))
		require.NoError(t, err)
		r := idemCmd(t, "", "get", "-admin", addr, key)
		require.Equal(t, 0, r.code, r.stderr)
		assert.Regexp(t, `key:\s+`+regexp.QuoteMeta(key)+`\n`, r.stdout)
		r = idemCmd(t, "", "release", "-yes", "-admin", addr, key)
		require.Equal(t, 0, r.code, r.stderr)
		_, err = s.Get(ctx, key)
		assert.ErrorIs(t, err, idem.ErrNotFound, key)
	}
}

// A line with a field import does not know (a misspelling, say) is a bad
// line that names the field, not a record imported without what the field
// held; -admin beside -data is a usage error on every command; stats
// -admin takes -prefix.
func TestImportUnknownFieldAndAdminFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "backup.jsonl")
	now := time.Now().UTC()
	later := now.Add(time.Hour)
	good := idemadmin.Record{Key: "good", State: "completed", Fingerprint: "00", Response: []byte("ok"), Token: 5, CreatedAt: &now, ExpiresAt: &later}
	b, err := json.Marshal(good)
	require.NoError(t, err)
	bad := strings.Replace(string(b), `"response"`, `"respnse"`, 1)
	require.NoError(t, os.WriteFile(file, []byte(bad+"\n"+string(b)+"\n"), 0o600))
	dst := filepath.Join(t.TempDir(), "dst")
	r := idemCmd(t, "", "import", "-data", dst, file)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, `line 1: json: unknown field "respnse"`)
	assert.Contains(t, r.stdout, "imported 1 records")

	dir, _ := prepare(t)
	for _, args := range [][]string{
		{"get", "-admin", "127.0.0.1:1", "-data", dir, "t1/done"},
		{"list", "-admin", "127.0.0.1:1", "-data", dir},
		{"stats", "-admin", "127.0.0.1:1", "-data", dir},
	} {
		r := idemCmd(t, "", args...)
		assert.Equal(t, 2, r.code, args)
		assert.Contains(t, r.stderr, "mutually exclusive", args)
	}

	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	srv := httptest.NewServer(adminHandler(s, nil, nil))
	defer srv.Close()
	r = idemCmd(t, "", "stats", "-json", "-admin", strings.TrimPrefix(srv.URL, "http://"), "-prefix", "t2/")
	require.Equal(t, 0, r.code, r.stderr)
	var st idemadmin.Stats
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
	assert.Equal(t, idemadmin.RecordCounts{InProgress: 1, Failed: 1}, st.Records, "only t2/")
}

// TestRepairChangedWhileAsking: the holder completes the record while the
// command waits for the operator's answer. The store refuses the delete
// the operator confirmed, and the command says why and exits 1.
func TestRepairChangedWhileAsking(t *testing.T) {
	s, err := idem.Open(t.TempDir(), &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	srv := httptest.NewServer(adminHandler(s, nil, &idemadmin.Options{Repairs: true}))
	defer srv.Close()
	l, _, err := s.Begin(ctx, "t1/pay", []byte("fp"))
	require.NoError(t, err)

	cmd := exec.Command(bin, "delete", "-admin", strings.TrimPrefix(srv.URL, "http://"), "t1/pay")
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr idemtest.SyncBuffer // written by the command's copying goroutine
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	var shown bytes.Buffer
	buf := make([]byte, 4096)
	for !strings.Contains(shown.String(), "[y/N] ") {
		n, err := stdout.Read(buf)
		shown.Write(buf[:n])
		require.NoError(t, err, "the command ended before asking: %s %s", shown.String(), stderr.String())
	}
	assert.Regexp(t, `state:\s+in-progress`, shown.String())

	require.NoError(t, l.Complete(ctx, []byte("charged")))
	_, err = io.WriteString(stdin, "y\n")
	require.NoError(t, err)
	require.NoError(t, stdin.Close())
	_, err = io.Copy(io.Discard, stdout)
	require.NoError(t, err)
	err = cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 1, ee.ExitCode())
	tok := itoa(l.Token())
	assert.Contains(t, stderr.String(), "refused, the record changed since it was shown (run idem get t1/pay again): "+
		`idem: force-delete "t1/pay": lease lost: the stored record is completed with token `+tok+", not in-progress with token "+tok)
	rec := mustGet(t, s, "t1/pay")
	assert.Equal(t, idem.StateCompleted, rec.State, "nothing changed")
	assert.Equal(t, "charged", string(rec.Response))
}

// TestImportStrict: a line that encoding/json would read but lose part of
// is a bad line, named by its number, that changes nothing stored: text
// after the record, a second record on the line, a field named twice or
// in another case (json keeps the last, or the one it matches), and
// attempts or a token no record can hold.
func TestImportStrict(t *testing.T) {
	now := time.Now().UTC()
	later := now.Add(time.Hour)
	rec := func(key, response string) string {
		b, err := json.Marshal(idemadmin.Record{Key: key, State: "completed", Fingerprint: "00", Response: []byte(response),
			Token: 5, Attempts: 1, CreatedAt: &now, ExpiresAt: &later})
		require.NoError(t, err)
		return string(b)
	}
	a := rec("a", "ok")
	respA := `"response":"b2s="`
	lines := []string{
		a,
		rec("b", "ok") + ` xyz`,
		rec("b", "ok") + rec("c", "ok"),
		strings.Replace(a, respA, respA+`,"response":"ZXZpbA=="`, 1),
		strings.Replace(a, respA, respA+`,"Response":"ZXZpbA=="`, 1),
		strings.Replace(a, respA, `"RESPONSE":"ZXZpbA=="`, 1),
		strings.Replace(a, `"key":"a"`, `"key":"d","key":"a"`, 1),
		strings.Replace(a, `"attempts":1`, `"attempts":3000000000`, 1),
		strings.Replace(a, `"attempts":1`, `"attempts":-1`, 1),
		strings.Replace(a, `"token":5`, `"token":9007199254740992`, 1),
		rec("z", "ok"),
	}
	file := filepath.Join(t.TempDir(), "backup.jsonl")
	require.NoError(t, os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600))
	dst := filepath.Join(t.TempDir(), "dst")
	r := idemCmd(t, "", "import", "-overwrite", "-data", dst, file)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stdout, "imported 2 records; kept 0 existing; skipped 0 expired; 9 bad lines")
	for _, want := range []string{
		`line 2: after the record: invalid character 'x' looking for beginning of value (one record a line)`,
		`line 3: after the record: another value, beginning { (one record a line)`,
		`line 4: field "response" twice`,
		`line 5: field "Response": its name is "response"`,
		`line 6: field "RESPONSE": its name is "response"`,
		`line 7: field "key" twice`,
		`line 8: key "a": attempts 3000000000 is out of range (0 to 2147483647)`,
		`line 9: key "a": attempts -1 is out of range (0 to 2147483647)`,
		`line 10: key "a": token 9007199254740992 is larger than the largest fencing token, 9007199254740991 (idem.MaxToken)`,
	} {
		assert.Contains(t, r.stderr, want+"\n")
	}
	s := open(t, dst)
	got := mustGet(t, s, "a")
	assert.Equal(t, "ok", string(got.Response), "no bad line changed it")
	assert.Equal(t, uint64(5), got.Token)
	assert.Equal(t, 1, got.Attempts)
	for _, key := range []string{"b", "c", "d"} {
		_, err := s.Get(ctx, key)
		assert.ErrorIs(t, err, idem.ErrNotFound, key)
	}
	assert.Equal(t, "ok", string(mustGet(t, s, "z").Response))
}
