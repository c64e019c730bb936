package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/badgerkv"
	"github.com/idemdb/idem/internal/storeinternal"
)

// recordPrefix is the namespace byte idem's Badger backend puts before
// every record key. The raw baselines read the same database, so they need
// it; fixture loading checks that a record written this way is found
// through the store, so a change of layout fails loudly instead of turning
// every baseline read into a miss.
const recordPrefix = "r"

// responseSize is the size of the stored response of every fixture record:
// a small JSON body such as a payment API returns.
const responseSize = 100

// rawRecord is the struct a user of raw Badger would keep for an
// idempotency key: the same fields as idem.Record, encoded by reflection
// with msgpack as an array in idem's stored layout, so the raw baselines
// decode exactly the bytes the store reads.
type rawRecord struct {
	//lint:ignore U1000 read by msgpack through its tag
	_msgpack    struct{} `msgpack:",as_array"`
	Version     uint8
	State       uint8
	Fingerprint []byte
	Response    []byte
	Retryable   bool
	Attempts    int
	Token       uint64
	CreatedAt   int64
	UpdatedAt   int64
	LeaseUntil  int64
	ExpiresAt   int64
	Holder      uint64
	Checksum    uint32
}

// keyOf returns the key of fixture record i: a scattered 16-digit hex
// string, as random as the UUIDs clients send, so the data's layout in the
// LSM tree is realistic.
func keyOf(prefix string, i uint64) string {
	// splitmix64: a bijection, so distinct i give distinct keys.
	z := i + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	var b [32]byte
	s := strconv.AppendUint(append(b[:0], prefix...), z|1<<60, 16)
	return string(s)
}

func fingerprintOf(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:]
}

var response = []byte(`{"id":"ch_3PqRtY2eZvKYlo2C1x8bQmNd","status":"succeeded","amount":1999,"currency":"eur","object":"ch"}`)[:responseSize]

// completedRecord returns the stored form of a completed record for key,
// living ttl from now.
func completedRecord(key string, now time.Time, ttl time.Duration) []byte {
	return storedForm(completed(key, now, ttl))
}

// completed returns the completed record of key, living ttl from now.
func completed(key string, now time.Time, ttl time.Duration) *idem.Record {
	return &idem.Record{
		Key: key, State: idem.StateCompleted, Fingerprint: fingerprintOf(key), Response: response,
		Attempts: 1, Token: binary.BigEndian.Uint64(fingerprintOf(key)) >> 12, CreatedAt: now, UpdatedAt: now,
		ExpiresAt: now.Add(ttl),
	}
}

// storedForm returns the bytes the store keeps for r (format version 1),
// so that fixtures can be written straight into Badger and Redis in
// batches: the store's own writes take one transaction each. It is
// rawRecord encoded by msgpack with the smallest integer forms, as the
// store writes them; TestStoredForm checks it against the bytes the store
// writes through Store.Restore. Times must lie within Unix nanoseconds
// (1677 to 2262).
func storedForm(r *idem.Record) []byte {
	ns := func(t time.Time) int64 {
		if t.IsZero() {
			return 0
		}
		return t.UnixNano()
	}
	buf := bytes.NewBuffer(make([]byte, 0, 80+len(r.Fingerprint)+len(r.Response)))
	enc := msgpack.GetEncoder()
	defer msgpack.PutEncoder(enc)
	enc.Reset(buf)
	enc.UseCompactInts(true)
	raw := &rawRecord{Version: 1, State: uint8(r.State), Fingerprint: r.Fingerprint, Response: r.Response,
		Retryable: r.Retryable, Attempts: r.Attempts, Token: r.Token, CreatedAt: ns(r.CreatedAt),
		UpdatedAt: ns(r.UpdatedAt), LeaseUntil: ns(r.LeaseUntil), ExpiresAt: ns(r.ExpiresAt)}
	raw.Checksum = raw.checksum()
	if err := enc.Encode(raw); err != nil {
		panic(err) // a bytes.Buffer does not fail
	}
	return buf.Bytes()
}

// checksum is the CRC-32C the store keeps with a record (see idem's
// codec.go): of the fixed-size fields, then the fingerprint and the
// response. TestStoredForm checks it against the store's.
func (r *rawRecord) checksum() uint32 {
	lenOrNil := func(p []byte) uint64 {
		if p == nil {
			return math.MaxUint64
		}
		return uint64(len(p))
	}
	retry := uint64(0)
	if r.Retryable {
		retry = 1
	}
	var b []byte
	for _, v := range []uint64{uint64(r.State), lenOrNil(r.Fingerprint), lenOrNil(r.Response), uint64(r.Attempts)<<1 | retry,
		r.Token, uint64(r.CreatedAt), uint64(r.UpdatedAt), uint64(r.LeaseUntil), uint64(r.ExpiresAt), r.Holder} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	tab := crc32.MakeTable(crc32.Castagnoli)
	c := crc32.Update(0, tab, b)
	c = crc32.Update(c, tab, r.Fingerprint)
	return crc32.Update(c, tab, r.Response)
}

func dbKey(buf []byte, key string) []byte {
	return append(append(buf[:0], recordPrefix...), key...)
}

// fixture is a store on disk holding n completed records, opened with the
// default options (the background GC loop off, so it cannot run inside a
// measurement).
type fixture struct {
	n     int
	dir   string
	keys  []string
	store *idem.Store
	db    *badger.DB
}

// fixtures opens each fixture once and keeps it for every workload of the
// run; close removes them.
type fixtures struct {
	root     string
	progress io.Writer // nil: no progress bar

	mu sync.Mutex
	m  map[int]*fixture
}

func newFixtures(root string, progress io.Writer) *fixtures {
	return &fixtures{root: root, progress: progress, m: map[int]*fixture{}}
}

// get returns the fixture with n records, loading it on first use.
func (f *fixtures) get(n int) (*fixture, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fx, ok := f.m[n]; ok {
		return fx, nil
	}
	dir := filepath.Join(f.root, fmt.Sprintf("records-%d", n))
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	if err != nil {
		return nil, err
	}
	fx := &fixture{n: n, dir: dir, store: s, db: engineOf(s)}
	fx.keys = make([]string, n)
	for i := range fx.keys {
		fx.keys[i] = keyOf("req-", uint64(i))
	}
	if err := load(fx.db, n, func(i int) string { return fx.keys[i] }, 24*time.Hour, newBar(f.progress, fmt.Sprintf("loading %s records", count(n)), n)); err != nil {
		_ = s.Close()
		return nil, err
	}
	// Reopen, so that every data set is read from its tables: otherwise a
	// small one would sit wholly in Badger's memtables and the scale rows
	// would compare a skiplist with an LSM tree.
	if err := s.Close(); err != nil {
		return nil, err
	}
	if s, err = idem.Open(dir, &idem.Options{GCInterval: -1}); err != nil {
		return nil, err
	}
	fx.store, fx.db = s, engineOf(s)
	settle(fx.db, time.Minute)
	// A running service has its tables paged in; a reopened store has not,
	// and on a large data set nearly every read of a short measurement
	// would take a page fault. One pass over the keys touches every table
	// (records are small, so their values sit in the same blocks).
	if err := fx.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
		}
		return nil
	}); err != nil {
		_ = s.Close()
		return nil, err
	}
	// The layout check: the store must find what was written.
	if _, err := s.Get(context.Background(), fx.keys[n-1]); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("fixture written under prefix %q is not found by the store (did the key layout change?): %w", recordPrefix, err)
	}
	f.m[n] = fx
	return fx, nil
}

func (f *fixtures) close() error {
	var errs []error
	for _, fx := range f.m {
		errs = append(errs, fx.store.Close())
	}
	errs = append(errs, os.RemoveAll(f.root))
	return errors.Join(errs...)
}

// load writes a completed record for key(0) .. key(n-1) with a Badger
// WriteBatch, which is several times faster than one transaction per
// record.
func load(db *badger.DB, n int, key func(int) string, ttl time.Duration, bar *bar) error {
	wb := db.NewWriteBatch()
	defer wb.Cancel()
	now := time.Now()
	exp := uint64(now.Add(ttl).Unix()) + 2
	var kb []byte
	for i := range n {
		k := key(i)
		kb = dbKey(kb, k)
		e := badger.NewEntry(append([]byte(nil), kb...), completedRecord(k, now, ttl))
		e.ExpiresAt = exp
		if err := wb.SetEntry(e); err != nil {
			return err
		}
		if i%4096 == 0 {
			bar.set(i)
		}
	}
	err := wb.Flush()
	bar.done()
	return err
}

// settle waits, at most max, until Badger has no compaction due (no level
// scored at 1 or more), so that measurements right after a load do not
// share the machine with the load's compactions: a long-running store is
// mostly in that state.
func settle(db *badger.DB, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		due := false
		for _, l := range db.Levels() {
			if l.Score >= 1 {
				due = true
			}
		}
		if !due {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rawGet is the raw Badger baseline for a read: View, Get, and a
// reflection-based msgpack decode of the value inside Badger's callback,
// the cheapest way raw Badger offers.
func rawGet(db *badger.DB, key string, now time.Time) (*rawRecord, error) {
	var buf [64]byte
	k := dbKey(buf[:0], key)
	var r rawRecord
	err := db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(k)
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error { return msgpack.Unmarshal(v, &r) })
	})
	if err != nil {
		return nil, err
	}
	if now.UnixNano() >= r.ExpiresAt {
		return nil, badger.ErrKeyNotFound
	}
	return &r, nil
}

// rawCreate is the raw Badger baseline for a claim: one update transaction
// that writes an in-progress record when the key is absent, retried on a
// conflict.
func rawCreate(db *badger.DB, key string, now time.Time) (created bool, err error) {
	var buf [64]byte
	k := dbKey(buf[:0], key)
	for {
		created = false
		err = db.Update(func(txn *badger.Txn) error {
			_, err := txn.Get(k)
			if err == nil || !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
			v, err := msgpack.Marshal(&rawRecord{
				Version: 1, State: uint8(idem.StateInProgress), Fingerprint: fingerprintOf(key), Attempts: 1, Token: 1,
				CreatedAt: now.UnixNano(), UpdatedAt: now.UnixNano(), LeaseUntil: now.Add(30 * time.Second).UnixNano(),
				ExpiresAt: now.Add(24 * time.Hour).UnixNano(),
			})
			if err != nil {
				return err
			}
			created = true
			return txn.SetEntry(badger.NewEntry(k, v).WithTTL(24 * time.Hour))
		})
		if !errors.Is(err, badger.ErrConflict) {
			return created, err
		}
	}
}

// rawComplete is the raw Badger baseline for a completion: one update
// transaction that reads the record, marks it completed with the response
// and writes it back.
func rawComplete(db *badger.DB, key string, now time.Time) error {
	var buf [64]byte
	k := dbKey(buf[:0], key)
	for {
		err := db.Update(func(txn *badger.Txn) error {
			item, err := txn.Get(k)
			if err != nil {
				return err
			}
			var r rawRecord
			if err := item.Value(func(v []byte) error { return msgpack.Unmarshal(v, &r) }); err != nil {
				return err
			}
			r.State, r.Response, r.UpdatedAt, r.LeaseUntil = uint8(idem.StateCompleted), response, now.UnixNano(), 0
			v, err := msgpack.Marshal(&r)
			if err != nil {
				return err
			}
			return txn.SetEntry(badger.NewEntry(k, v).WithTTL(24 * time.Hour))
		})
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
}

// openRaw opens a raw Badger database with its default options, as a user
// of raw Badger would, silenced.
func openRaw(dir string, syncWrites bool) (*badger.DB, error) {
	return badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithSyncWrites(syncWrites).WithMetricsEnabled(false))
}

// count formats a record count as 100k, 1M, 10M.
func count(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}

// bar is a progress bar on stderr, shown only for loads that take more
// than a couple of seconds.
type bar struct {
	w     io.Writer
	label string
	total int
	start time.Time
	last  time.Time // when the bar was last drawn
	shown bool
}

func newBar(w io.Writer, label string, total int) *bar {
	return &bar{w: w, label: label, total: total, start: time.Now()}
}

func (b *bar) set(n int) {
	if b == nil || b.w == nil {
		return
	}
	el := time.Since(b.start)
	if el < 2*time.Second || (n < b.total && time.Since(b.last) < 200*time.Millisecond) {
		return
	}
	b.last = time.Now()
	const width = 30
	fill := width * n / max(b.total, 1)
	fmt.Fprintf(b.w, "\r%s [%s%s] %3d%% %s ", b.label, strings.Repeat("#", fill), strings.Repeat(" ", width-fill),
		100*n/max(b.total, 1), el.Round(100*time.Millisecond))
	b.shown = true
}

func (b *bar) done() {
	if b == nil || b.w == nil {
		return
	}
	if b.shown {
		b.set(b.total)
		fmt.Fprintln(b.w)
	}
}

// engineOf returns the Badger database under an embedded store, for the
// raw baselines measured beside it.
func engineOf(s *idem.Store) *badger.DB {
	return storeinternal.Engine(s).(*badgerkv.DB).Badger()
}
