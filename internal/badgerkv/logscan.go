package badgerkv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Badger's logs: the write-ahead log of each memtable (NNNNN.mem) and
// the value log (NNNNNN.vlog) share one format. A file starts with a
// 20-byte header (an 8-byte encryption key id, zero when unencrypted,
// and a 12-byte IV), then holds entries:
//
//	meta byte, user meta byte, uvarint key length, uvarint value length,
//	uvarint expiry, key, value, CRC-32C (big endian) of all that precedes
//
// A read-write open replays every .mem file and the newest .vlog file up
// to the first entry that does not read back (a short read, a checksum
// mismatch, a key longer than 64 KiB or empty, a transaction out of
// order), and cuts the file there without a word. That is right for the
// torn end a crash leaves; it is silent loss when the bad entry is damage
// in the middle of the log, with valid entries after it. scanLog tells
// the two apart before Badger opens the directory.

// logHeaderSize is the size of a .mem or .vlog file's header in Badger v4.
const logHeaderSize = vlogHeaderSize

// Bits of an entry's meta byte (Badger's value.go).
const (
	metaTxn    = 1 << 6 // part of a transaction
	metaFinTxn = 1 << 7 // the end-of-transaction marker
	// metaKnown are the bits Badger sets: delete, value pointer,
	// discard earlier versions, merge, txn, end of txn.
	metaKnown = 1<<0 | 1<<1 | 1<<2 | 1<<3 | metaTxn | metaFinTxn
)

// Limits Badger puts on an entry.
const (
	// maxEntryHeader is what the header may take to decode: two bytes
	// and three uvarints (Badger reads 64-bit ones).
	maxEntryHeader = 2 + 3*binary.MaxVarintLen64
	maxLogKey      = 1 << 16 // Badger stops replaying at a longer key
	minLogKey      = 9       // every stored key ends in an 8-byte version
)

// LogScan is what scanLog found in one log file.
type LogScan struct {
	File string // the file's path
	Size int64  // its size in bytes
	// Writes is the number of entries a read-write open replays, not
	// counting Badger's end-of-transaction markers, and End the offset
	// where the replay stops: Badger cuts the file there.
	Writes int
	End    int64
	// Damage is set when the replay would stop at damage rather than at
	// the end of what was written.
	Damage *LogDamage
	// Err is set when the file could not be scanned (unreadable, or a
	// damaged file header): a read-write open refuses it whatever the
	// options.
	Err error
}

// LogDamage describes a bad entry that Badger's replay would stop at
// although it is not the torn end of the log.
type LogDamage struct {
	Offset int64  // where the bad entry starts
	Reason string // what is wrong with it
	// WritesAfter is the number of entries after Offset whose checksum
	// holds (end-of-transaction markers not counted), and BytesAfter the
	// bytes from LogScan.End to the end of the last of them: what a
	// read-write open would discard. Both are zero when the bad entry
	// itself is the damage (a length no torn write leaves).
	WritesAfter int
	BytesAfter  int64
	// ZeroFilled says that the bad range up to the next valid entry is
	// zero bytes covering a whole 4 KiB page. A power loss can leave
	// that in the part of a log written since the last sync (the kernel
	// wrote a later page before an earlier one), so the writes after it
	// were never acknowledged under SyncAlways; a failing disk can too.
	ZeroFilled bool
	// Unsure says that the scan gave up looking for valid entries after
	// Offset (see scanBudget): there may be none.
	Unsure bool
}

func (d *LogDamage) String() string {
	s := fmt.Sprintf("bad entry at offset %d (%s)", d.Offset, d.Reason)
	switch {
	case d.Unsure:
		s += "; the entries after it could not all be checked, and a read-write open would discard them"
	case d.WritesAfter > 0:
		s += fmt.Sprintf("; %d valid writes (%d bytes) follow it, which a read-write open would discard", d.WritesAfter, d.BytesAfter)
	}
	if d.ZeroFilled {
		s += "; the bad range is zero-filled pages, which a power loss leaves for writes not yet synced"
	}
	return s
}

// logFiles returns the paths of the .mem and .vlog files in dir, in
// name order, and the path of the newest .vlog file ("" if none): the
// only value log Badger replays.
func logFiles(dir string) (logs []string, lastVlog string, err error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	var maxFid uint64
	for _, e := range ents {
		name := e.Name()
		switch filepath.Ext(name) {
		case ".mem":
			logs = append(logs, filepath.Join(dir, name))
		case ".vlog":
			logs = append(logs, filepath.Join(dir, name))
			fid, err := strconv.ParseUint(strings.TrimSuffix(name, ".vlog"), 10, 32)
			if err == nil && (lastVlog == "" || fid >= maxFid) {
				maxFid, lastVlog = fid, filepath.Join(dir, name)
			}
		}
	}
	sort.Strings(logs)
	return logs, lastVlog, nil
}

// replayed reports whether a read-write open replays, and so cuts, the
// log at path: every .mem file and the newest .vlog file.
func replayed(path, lastVlog string) bool {
	return filepath.Ext(path) == ".mem" || path == lastVlog
}

// ScanLogs scans every log file in dir (see LogScan), reading them with
// plain reads and changing nothing.
func ScanLogs(dir string) ([]LogScan, error) {
	logs, _, err := logFiles(dir)
	if err != nil {
		return nil, err
	}
	scans := make([]LogScan, 0, len(logs))
	for _, path := range logs {
		scans = append(scans, scanLog(path))
	}
	return scans, nil
}

// scanLog scans the log at path: it walks its entries as Badger's replay
// does, checking every checksum, to where the replay would stop. If the
// file goes on past that point with anything but zeros, it looks for
// valid entries there (resync). Every length is bounded by the file
// before it is used, and memory use is one window of logWindow bytes
// whatever the file claims.
func scanLog(path string) LogScan {
	s := LogScan{File: path}
	f, err := os.Open(path)
	if err != nil {
		s.Err = err
		return s
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		s.Err = err
		return s
	}
	s.Size = st.Size()
	r := newLogReader(f, s.Size)
	s.End = logHeaderSize
	if s.Size < logHeaderSize {
		// A file created at the moment of a crash: Badger writes its
		// header anew.
		s.End = s.Size
		return s
	}
	h, err := r.at(0, logHeaderSize)
	if err != nil {
		s.Err = err
		return s
	}
	if id := binary.BigEndian.Uint64(h[:8]); id != 0 {
		s.Err = fmt.Errorf("file header names encryption key %d, but the store never encrypts: the header is damaged", id)
		return s
	}

	// The walk follows Badger's logFile.iterate: entries of a
	// transaction count once its end marker is read.
	off := int64(logHeaderSize)
	var lastCommit uint64
	pending := 0
	var stop *entryStop
walk:
	for {
		e, st, err := r.entry(off)
		if err != nil {
			s.Err = err
			return s
		}
		if st != nil {
			stop = st
			break
		}
		switch {
		case e.meta&metaTxn != 0:
			ts := e.version
			if lastCommit == 0 {
				lastCommit = ts
			}
			if lastCommit != ts {
				stop = &entryStop{off: off, reason: "a transaction's entry before the previous one ended", valid: true}
				break walk
			}
			pending++
		case e.meta&metaFinTxn != 0:
			if !e.finOK || e.finTs != lastCommit {
				stop = &entryStop{off: off, reason: "a transaction's end marker that does not match its entries", valid: true}
				break walk
			}
			lastCommit = 0
			s.Writes += pending
			pending = 0
			s.End = off + e.size
		default:
			if lastCommit != 0 {
				stop = &entryStop{off: off, reason: "an entry outside a transaction before the transaction ended", valid: true}
				break walk
			}
			s.Writes++
			s.End = off + e.size
		}
		off += e.size
	}
	if stop.off >= s.Size {
		return s
	}
	d, err := r.resync(stop, s.End)
	if err != nil {
		s.Err = err
		return s
	}
	s.Damage = d
	return s
}

// entryStop is where and why the walk stopped.
type entryStop struct {
	off    int64
	reason string
	valid  bool // the entry at off reads back: the stop is Badger's transaction check
	// damage says that the entry at off is damaged whatever follows it:
	// no torn write leaves it.
	damage bool
}

// logEntry is the part of an entry the walk needs.
type logEntry struct {
	meta    byte
	size    int64  // header, key, value and checksum
	version uint64 // from the key's last 8 bytes
	finTs   uint64 // an end marker's value: the transaction's version
	finOK   bool   // finTs parsed
}

// logWindow is the size of a logReader's buffer.
const logWindow = 1 << 20

// logReader reads a log file through one window of logWindow bytes.
type logReader struct {
	f    *os.File
	size int64
	win  []byte
	wOff int64 // file offset of win[0]
	wLen int   // bytes of win that hold the file
	// budget bounds the bytes checksummed while looking for valid
	// entries after a bad one (see resync).
	budget int64
}

func newLogReader(f *os.File, size int64) *logReader {
	n := int64(logWindow)
	if size < n {
		n = size
	}
	return &logReader{f: f, size: size, win: make([]byte, n)}
}

// at returns up to n <= len(r.win) bytes at off: fewer at the end of the
// file.
func (r *logReader) at(off int64, n int) ([]byte, error) {
	if off >= r.wOff && off+int64(n) <= r.wOff+int64(r.wLen) {
		i := int(off - r.wOff)
		return r.win[i : i+n], nil
	}
	if off >= r.size {
		return nil, nil
	}
	m, err := r.f.ReadAt(r.win, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	r.wOff, r.wLen = off, m
	return r.win[:min(n, m)], nil
}

// entry reads the entry at off and checks it as Badger's safeRead.Entry
// does, without allocating for its key or value. It returns a stop for
// an entry Badger's replay would stop at, and an error only for a read
// that failed.
func (r *logReader) entry(off int64) (logEntry, *entryStop, error) {
	var e logEntry
	stopAt := func(reason string) (logEntry, *entryStop, error) {
		return e, &entryStop{off: off, reason: reason}, nil
	}
	hb, err := r.at(off, maxEntryHeader)
	if err != nil {
		return e, nil, err
	}
	if len(hb) < 2 {
		return stopAt("cut short")
	}
	e.meta = hb[0]
	hlen := 2
	var v [3]uint64
	for i := range v {
		x, n := binary.Uvarint(hb[hlen:])
		if n < 0 {
			// Badger's open fails on it instead of stopping.
			e.size = 0
			st := &entryStop{off: off, reason: "a length that overflows", damage: true}
			return e, st, nil
		}
		if n == 0 {
			return stopAt("cut short")
		}
		v[i], hlen = x, hlen+n
	}
	// Badger keeps the lengths as uint32.
	klen, vlen := int64(uint32(v[0])), int64(uint32(v[1]))
	if klen > maxLogKey {
		return stopAt(fmt.Sprintf("key length %d over 64 KiB", klen))
	}
	e.size = int64(hlen) + klen + vlen + crc32.Size
	if e.size > r.size-off {
		if e.size > r.size {
			// No torn write claims more than the file holds (Badger
			// preallocates its logs), and Badger would allocate three
			// times the claimed value before finding the file too short.
			st := &entryStop{off: off, reason: fmt.Sprintf("a length of %d bytes, more than the file holds", e.size), damage: true}
			e.size = 0
			return e, st, nil
		}
		return stopAt("cut short")
	}
	sum, err := r.crc(off, e.size-crc32.Size)
	if err != nil {
		return e, nil, err
	}
	cb, err := r.at(off+e.size-crc32.Size, crc32.Size)
	if err != nil {
		return e, nil, err
	}
	if len(cb) < crc32.Size || binary.BigEndian.Uint32(cb) != sum {
		return stopAt("checksum mismatch")
	}
	if klen == 0 {
		return stopAt("empty key")
	}
	if klen > 8 {
		kb, err := r.at(off+int64(hlen)+klen-8, 8)
		if err != nil {
			return e, nil, err
		}
		if len(kb) == 8 {
			e.version = ^binary.BigEndian.Uint64(kb) // Badger stores MaxUint64 - version
		}
	}
	if e.meta&metaFinTxn != 0 && vlen <= 64 {
		vb, err := r.at(off+int64(hlen)+klen, int(vlen))
		if err != nil {
			return e, nil, err
		}
		e.finTs, err = strconv.ParseUint(string(vb), 10, 64)
		e.finOK = err == nil
	}
	return e, nil, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc returns the CRC-32C of the n bytes at off, which lie in the file.
func (r *logReader) crc(off, n int64) (uint32, error) {
	var sum uint32
	for n > 0 {
		b, err := r.at(off, int(min(n, int64(len(r.win)))))
		if err != nil {
			return 0, err
		}
		if len(b) == 0 {
			return 0, io.ErrUnexpectedEOF
		}
		sum = crc32.Update(sum, castagnoli, b)
		off += int64(len(b))
		n -= int64(len(b))
	}
	return sum, nil
}

// scanBudget bounds the bytes resync checksums for a file of size bytes:
// a few times the file. Only a plausible header (known meta bits, a key
// of 9 bytes to 64 KiB, an entry inside the file) is checksummed, so
// zeros and the damaged bytes of a real log cost next to nothing.
func scanBudget(size int64) int64 { return 4*size + 64<<20 }

// resync looks after the stop for entries whose checksum holds and
// returns the damage, or nil when the stop is the torn end of the log:
// nothing valid follows.
func (r *logReader) resync(stop *entryStop, end int64) (*LogDamage, error) {
	d := &LogDamage{Offset: stop.off, Reason: stop.reason}
	r.budget = scanBudget(r.size)
	c := stop.off + 1
	if stop.valid {
		c = stop.off
	}
	var last int64 // end of the last valid entry found
	for c < r.size {
		// Skip zeros: no entry has a zero key length.
		nz, err := r.nonZero(c + 2)
		if err != nil {
			return nil, err
		}
		if nz >= r.size {
			break
		}
		if nz-2 > c {
			if last == 0 && pageInside(c+2, nz) {
				d.ZeroFilled = true
			}
			c = nz - 2
		}
		ok, err := r.plausible(c)
		if err != nil {
			return nil, err
		}
		if !ok {
			if r.budget < 0 {
				d.Unsure = true
				break
			}
			c++
			continue
		}
		// Walk on from the valid entry while entries hold.
		for {
			e, st, err := r.entry(c)
			if err != nil {
				return nil, err
			}
			if st != nil {
				break
			}
			if e.meta&metaFinTxn == 0 {
				d.WritesAfter++
			}
			c += e.size
			last = c
		}
		c++
	}
	if d.WritesAfter > 0 {
		d.BytesAfter = last - end
		return d, nil
	}
	// End markers alone after the stop end the transactions that the
	// stop cut: it is the torn end of the log, and nothing valid would be
	// lost with them.
	d.ZeroFilled = false
	if stop.damage || d.Unsure {
		return d, nil
	}
	return nil, nil
}

// plausible reports whether an entry that Badger could have written
// starts at off, checksum included, charging the checksummed bytes to
// r.budget.
func (r *logReader) plausible(off int64) (bool, error) {
	hb, err := r.at(off, maxEntryHeader)
	if err != nil || len(hb) < 5 {
		return false, err
	}
	if hb[0]&^metaKnown != 0 || hb[0]&(metaTxn|metaFinTxn) == metaTxn|metaFinTxn {
		return false, nil
	}
	hlen := 2
	var v [3]uint64
	for i := range v {
		x, n := binary.Uvarint(hb[hlen:])
		if n <= 0 {
			return false, nil
		}
		v[i], hlen = x, hlen+n
	}
	if v[0] < minLogKey || v[0] > maxLogKey || v[1] > uint64(r.size) {
		return false, nil
	}
	size := int64(hlen) + int64(v[0]) + int64(v[1]) + crc32.Size
	if size > r.size-off {
		return false, nil
	}
	if r.budget < 0 {
		return false, nil
	}
	r.budget -= size
	sum, err := r.crc(off, size-crc32.Size)
	if err != nil {
		return false, err
	}
	cb, err := r.at(off+size-crc32.Size, crc32.Size)
	if err != nil || len(cb) < crc32.Size {
		return false, err
	}
	return binary.BigEndian.Uint32(cb) == sum, nil
}

// nonZero returns the offset of the first byte at or after off that is
// not zero, or the file size. Holes of a sparse file are skipped without
// reading them.
func (r *logReader) nonZero(off int64) (int64, error) {
	for off < r.size {
		b, err := r.at(off, int(min(int64(len(r.win)), r.size-off)))
		if err != nil {
			return 0, err
		}
		if len(b) == 0 {
			return r.size, nil
		}
		if i := firstNonZero(b); i >= 0 {
			return off + int64(i), nil
		}
		off += int64(len(b))
		if next := nextData(r.f, off, r.size); next > off {
			off = next
		}
	}
	return r.size, nil
}

// firstNonZero returns the index of the first byte of b that is not
// zero, or -1.
func firstNonZero(b []byte) int {
	i := 0
	for ; i+8 <= len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:]) != 0 {
			break
		}
	}
	for ; i < len(b); i++ {
		if b[i] != 0 {
			return i
		}
	}
	return -1
}

// pageInside reports whether [from, to) covers a whole 4 KiB page.
func pageInside(from, to int64) bool {
	const page = 4096
	first := (from + page - 1) / page * page
	return first+page <= to
}

// checkLogs scans the logs of dir before an open (see scanLog): only the
// memtable logs when memOnly. Damage is refused with an error wrapping ErrCorrupt that
// names the file, the offset and what would be lost, changing nothing,
// unless discard is set: then each damaged log that Badger replays is cut
// at the end of what precedes the damage, as Badger would cut it, and
// what is discarded is logged at Error level. Everything before the
// damage is kept, so a write acknowledged before it is never lost.
func checkLogs(dir string, memOnly, discard bool, log *slog.Logger) error {
	logs, lastVlog, err := logFiles(dir)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	var damaged []LogScan
	for _, path := range logs {
		if memOnly && filepath.Ext(path) != ".mem" {
			continue
		}
		s := scanLog(path)
		if s.Err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, path, s.Err)
		}
		if s.Damage != nil {
			damaged = append(damaged, s)
		}
	}
	if len(damaged) == 0 {
		return nil
	}
	if !discard {
		s := damaged[0]
		how := "open it"
		if memOnly {
			how = "open it read-write"
		}
		more := ""
		if len(damaged) > 1 {
			more = fmt.Sprintf(" (and %d more damaged logs)", len(damaged)-1)
		}
		return fmt.Errorf("%w: %s: %v%s; nothing was changed: restore the directory from a backup, or %s with DiscardDamagedLog to keep what precedes the damage and discard the rest", ErrCorrupt, s.File, s.Damage, more, how)
	}
	for _, s := range damaged {
		d := s.Damage
		if !replayed(s.File, lastVlog) {
			// Badger does not replay it: nothing is cut, and the values
			// after the damage are read where the tables point.
			if log != nil {
				log.Error("idem: opening with a damaged value log (DiscardDamagedLog): values stored at or after the damage may read back wrong or not at all", "file", s.File, "offset", d.Offset, "reason", d.Reason)
			}
			continue
		}
		if log != nil {
			log.Error("idem: discarding the end of a damaged log (DiscardDamagedLog)", "file", s.File, "offset", d.Offset, "reason", d.Reason,
				"kept_bytes", s.End, "kept_writes", s.Writes, "discarded_writes", d.WritesAfter, "discarded_bytes", s.Size-s.End, "discarded_valid_bytes", d.BytesAfter)
		}
		if err := cutLog(s.File, s.End); err != nil {
			return fmt.Errorf("%s: cutting the damaged log at %d: %w", s.File, s.End, err)
		}
	}
	return nil
}

// cutLog truncates the log at path to end bytes and syncs it.
func cutLog(path string, end int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Truncate(end); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// checkBeforeOpen runs the checks of the directory before Badger opens
// it (checkDir, and checkLogs for a read-write open) under the lock
// Badger would take, so that they never read files another process is
// writing.
func checkBeforeOpen(cfg *Config) error {
	release, err := lockDir(cfg.Dir, cfg.ReadOnly)
	if errors.Is(err, ErrLocked) {
		return fmt.Errorf("%w (its lock is held)", ErrLocked)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	defer release()
	if err := checkDir(cfg.Dir, cfg.ReadOnly, cfg.Logger); err != nil {
		return err
	}
	// A read-only open replays the memtable logs too, before it finds
	// that they need recovery, and allocates what a damaged length
	// claims; it reads no value log.
	return checkLogs(cfg.Dir, cfg.ReadOnly, cfg.DiscardDamagedLog && !cfg.ReadOnly, cfg.Logger)
}
