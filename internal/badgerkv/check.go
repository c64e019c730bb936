package badgerkv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/fb"
	"github.com/dgraph-io/badger/v4/pb"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/badger/v4/y"
	"google.golang.org/protobuf/proto"
)

// checkDir looks for damage in the data directory dir before Badger
// opens it, reading and changing nothing, and returns an error wrapping
// ErrCorrupt that names the damaged file. Badger itself would open a
// directory with data files and no MANIFEST as an empty store (and a
// read-write open would then delete every table), and panics in a
// goroutine of its own on a truncated table.
//
// A table file the MANIFEST does not list is the normal leftover of a
// crash during a flush or compaction, and Badger deletes it at open: it
// is refused only by a read-only open (ErrNeedsRecovery), which must not
// delete anything.
func checkDir(dir string, readOnly bool, log *slog.Logger) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	tables := map[uint64]bool{}
	var logs, data []string
	for _, e := range ents {
		name := e.Name()
		switch filepath.Ext(name) {
		case ".sst":
			if id, ok := table.ParseFileID(name); ok {
				tables[id] = true
			}
			data = append(data, name)
		case ".vlog":
			logs = append(logs, name)
			data = append(data, name)
		case ".mem":
			data = append(data, name)
		}
	}
	mpath := filepath.Join(dir, badger.ManifestFilename)
	f, err := os.Open(mpath)
	if errors.Is(err, os.ErrNotExist) {
		if len(data) > 0 {
			sort.Strings(data)
			return fmt.Errorf("%w: %s is missing, beside %d data files (%s...): without it the data cannot be read, and opening would start an empty store", ErrCorrupt, mpath, len(data), data[0])
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %s unreadable: %v", ErrCorrupt, mpath, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%w: %s unreadable: %v", ErrCorrupt, mpath, err)
	}
	m, end, err := replayManifest(f)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrCorrupt, mpath, err)
	}
	if end < st.Size() && !readOnly && log != nil {
		// An append the crash interrupted: Badger syncs a change before
		// it acts on it, so nothing acknowledged depends on the torn end.
		log.Warn("idem: the MANIFEST ends in a torn change (a crash while it was written): Badger will cut it", "file", mpath, "bytes", st.Size()-end)
	}
	ids := make([]uint64, 0, len(m.Tables))
	for id := range m.Tables {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		path := table.NewFilename(id, dir)
		if !tables[id] {
			return fmt.Errorf("%w: %s is listed in the MANIFEST but missing", ErrCorrupt, path)
		}
		if err := checkTable(path); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
		}
	}
	var unlisted []string
	for id := range tables {
		if _, ok := m.Tables[id]; !ok {
			unlisted = append(unlisted, filepath.Base(table.NewFilename(id, dir)))
		}
	}
	if len(unlisted) > 0 {
		sort.Strings(unlisted)
		if end < st.Size() {
			// The torn change may be the one that listed them: a MANIFEST
			// truncated in the middle of a change looks the same, and
			// Badger would delete the tables it lost.
			return fmt.Errorf("%w: %s ends in a torn change and the tables %s are not listed in it: it may have lost changes, and opening would delete them", ErrCorrupt, mpath, strings.Join(unlisted, ", "))
		}
		if readOnly {
			return fmt.Errorf("%w: %s holds tables the MANIFEST does not list (%s), left by a crash during a flush, which only a read-write open clears", ErrNeedsRecovery, dir, strings.Join(unlisted, ", "))
		}
		if log != nil {
			log.Warn("idem: deleting tables the MANIFEST does not list (left by a crash during a flush)", "dir", dir, "files", unlisted)
		}
	}
	for _, name := range logs {
		if err := checkValueLog(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, filepath.Join(dir, name), err)
		}
	}
	return nil
}

// replayManifest reads the MANIFEST, returning a panic in Badger's reader
// as an error.
func replayManifest(f *os.File) (m badger.Manifest, end int64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("unreadable: %v", r)
		}
	}()
	return badger.ReplayManifestFile(f, 0, badger.DefaultOptions("").WithLogger(nil))
}

// checkTable reads the footer and the index of the table at path, as
// Badger's table.OpenTable does but with every length bounded and without
// a memory mapping, and checks that the index's checksum holds and that
// its blocks lie inside the file. A truncated table fails here.
func checkTable(path string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("unreadable index: %v", r)
		}
	}()
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	u32 := func(off int64) (int64, error) {
		var b [4]byte
		if off < 0 {
			return 0, io.ErrUnexpectedEOF
		}
		if _, err := f.ReadAt(b[:], off); err != nil {
			return 0, err
		}
		return int64(binary.BigEndian.Uint32(b[:])), nil
	}
	bad := func(what string) error {
		return fmt.Errorf("%s (file is %d bytes: truncated or overwritten?)", what, size)
	}
	pos := size - 4
	chkLen, err := u32(pos)
	if err != nil {
		return bad("no footer")
	}
	if chkLen > 64 || chkLen > pos-4 {
		return bad("checksum length " + strconv.FormatInt(chkLen, 10) + " out of range")
	}
	pos -= chkLen
	chkBuf := make([]byte, chkLen)
	if _, err := f.ReadAt(chkBuf, pos); err != nil {
		return bad("checksum unreadable")
	}
	var chk pb.Checksum
	if err := proto.Unmarshal(chkBuf, &chk); err != nil {
		return bad("checksum unreadable")
	}
	pos -= 4
	idxLen, err := u32(pos)
	if err != nil || idxLen > pos {
		return bad("index length out of range")
	}
	pos -= idxLen
	idx := make([]byte, idxLen)
	if _, err := f.ReadAt(idx, pos); err != nil {
		return bad("index unreadable")
	}
	if err := y.VerifyChecksum(idx, &chk); err != nil {
		return bad("index checksum mismatch")
	}
	ti := fb.GetRootAsTableIndex(idx, 0)
	if n := ti.OffsetsLength(); n > 0 {
		var bo fb.BlockOffset
		if !ti.Offsets(&bo, n-1) || int64(bo.Offset())+int64(bo.Len()) > pos {
			return bad("blocks past the index")
		}
	}
	return nil
}

// vlogHeaderSize is the size of a value-log file's header in Badger v4.
const vlogHeaderSize = 20

// checkValueLog checks that the value-log file at path can be read and
// holds its header.
func checkValueLog(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var h [vlogHeaderSize]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return fmt.Errorf("header unreadable: %v", err)
	}
	return nil
}
