package badgerkv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// DirReport is what Verify found in a data directory.
type DirReport struct {
	Dir      string
	Manifest bool      // the MANIFEST exists
	Tables   int       // table files (.sst)
	Logs     []LogScan // every .mem and .vlog file, in name order
	// Problem is what the checks a read-only Open runs before Badger
	// found (MANIFEST, tables, value-log headers): an error wrapping
	// ErrCorrupt or ErrNeedsRecovery, or nil.
	Problem error
}

// Damaged reports whether Verify found damage: a Problem wrapping
// ErrCorrupt, or a log that is unreadable or damaged.
func (r *DirReport) Damaged() bool {
	if errors.Is(r.Problem, ErrCorrupt) {
		return true
	}
	for _, l := range r.Logs {
		if l.Err != nil || l.Damage != nil {
			return true
		}
	}
	return false
}

// Verify runs the checks Open runs before Badger opens dir, read-only
// ones and the scan of the logs (ScanLogs) alike, and reports what they
// found without stopping at the first. It holds a shared lock on dir
// while it reads, as a read-only Open does, and changes no byte. It
// returns an error only when dir cannot be read at all, or one wrapping
// ErrLocked when a read-write process holds it.
func Verify(dir string) (DirReport, error) {
	r := DirReport{Dir: dir}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return r, err
	}
	release, err := lockDir(dir, true)
	if err != nil {
		return r, fmt.Errorf("verify %s: %w", dir, err)
	}
	defer release()
	for _, e := range ents {
		switch {
		case e.Name() == "MANIFEST":
			r.Manifest = true
		case filepath.Ext(e.Name()) == ".sst":
			r.Tables++
		}
	}
	r.Problem = checkDir(dir, true, nil)
	r.Logs, err = ScanLogs(dir)
	if err != nil {
		return r, err
	}
	return r, nil
}
