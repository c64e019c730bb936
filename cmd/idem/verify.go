package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/badgerkv"
)

func init() {
	register(&command{
		name:    "verify",
		summary: "check a Badger store's files, logs and records for damage, changing nothing",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			data := fs.String("data", "", "data directory `DIR` of the Badger store (required)")
			asJSON := fs.Bool("json", false, "print JSON")
			return func(args []string, stdout, stderr io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				dir := *data
				if dir == "" {
					return usageErr("no store given: pass -data DIR")
				}
				if _, err := os.Stat(dir); err != nil {
					return fmt.Errorf("no store at %s: %w", dir, err)
				}
				v, err := verify(dir, stderr)
				if err != nil {
					return err
				}
				if *asJSON {
					if err := json.NewEncoder(stdout).Encode(v); err != nil {
						return err
					}
				} else if err := printVerify(stdout, v); err != nil {
					return err
				}
				if v.Damaged {
					for _, l := range v.Logs {
						if l.Damage != nil {
							return fmt.Errorf("%s is damaged (see the report): restore it from a backup, or run `idem recover -discard-damaged-log -data %s` to keep what precedes the damage and discard the rest", dir, dir)
						}
					}
					return fmt.Errorf("%s is damaged (see the report)", dir)
				}
				return nil
			}
		},
	})
}

// verifyReport is what idem verify found.
type verifyReport struct {
	Dir      string `json:"dir"`
	Manifest bool   `json:"manifest"`
	Tables   int    `json:"tables"`
	// Check is the damage, or the need for recovery, that the checks
	// before an open found in the MANIFEST, tables and value-log headers.
	Check         string      `json:"check,omitempty"`
	Logs          []verifyLog `json:"logs"`
	NeedsRecovery bool        `json:"needs_recovery"`
	Records       *verifyRecs `json:"records,omitempty"`
	// NotRead says why the records were not read ("" when they were).
	NotRead string `json:"records_not_read,omitempty"`
	Damaged bool   `json:"damaged"`
}

type verifyLog struct {
	File   string        `json:"file"`
	Size   int64         `json:"size"`
	Writes int           `json:"writes"` // what a read-write open replays
	End    int64         `json:"end"`    // where its replay stops
	Error  string        `json:"error,omitempty"`
	Damage *verifyDamage `json:"damage,omitempty"`
}

// verifyDamage is badgerkv.LogDamage.
type verifyDamage struct {
	Offset      int64  `json:"offset"`
	Reason      string `json:"reason"`
	WritesAfter int    `json:"writes_after"`
	BytesAfter  int64  `json:"bytes_after"`
	ZeroFilled  bool   `json:"zero_filled,omitempty"`
	Unsure      bool   `json:"unsure,omitempty"`
}

type verifyRecs struct {
	Good        int      `json:"good"`
	Expired     int      `json:"expired"`
	Corrupt     int      `json:"corrupt"`
	CorruptKeys []string `json:"corrupt_keys,omitempty"` // the first few
}

// maxCorruptKeys bounds the corrupt keys verify names.
const maxCorruptKeys = 20

// verify checks the Badger store in dir: the checks an open runs
// (MANIFEST, tables), a scan of every log, and, when the store opens
// read-only, every record decoded. It changes no byte.
func verify(dir string, stderr io.Writer) (*verifyReport, error) {
	d, err := badgerkv.Verify(dir)
	if errors.Is(err, badgerkv.ErrLocked) {
		return nil, fmt.Errorf("%s is in use by a read-write process (a running idem server or application): stop it to verify the directory: %w", dir, idem.ErrLocked)
	}
	if err != nil {
		return nil, err
	}
	v := &verifyReport{Dir: dir, Manifest: d.Manifest, Tables: d.Tables, Logs: []verifyLog{}, Damaged: d.Damaged()}
	if d.Problem != nil {
		v.Check = d.Problem.Error()
		v.NeedsRecovery = errors.Is(d.Problem, badgerkv.ErrNeedsRecovery)
	}
	for _, l := range d.Logs {
		vl := verifyLog{File: filepath.Base(l.File), Size: l.Size, Writes: l.Writes, End: l.End}
		if l.Err != nil {
			vl.Error = l.Err.Error()
		}
		if dm := l.Damage; dm != nil {
			vl.Damage = &verifyDamage{dm.Offset, dm.Reason, dm.WritesAfter, dm.BytesAfter, dm.ZeroFilled, dm.Unsure}
		}
		v.Logs = append(v.Logs, vl)
	}
	if d.Problem != nil {
		v.NotRead = "the checks above failed"
		return v, nil
	}
	s, err := idem.Open(dir, &idem.Options{
		GCInterval: -1,
		ReadOnly:   true,
		Logger:     slog.New(slog.NewTextHandler(stderr, nil)),
		MaxKeySize: idem.MaxKeySizeLimit,
	})
	switch {
	case errors.Is(err, idem.ErrNeedsRecovery):
		v.NeedsRecovery = true
		v.NotRead = "the store was not closed cleanly: its logs must be replayed by a read-write open (idem recover) before its records can be read"
		return v, nil
	case err != nil && v.Damaged && errors.Is(err, idem.ErrCorrupt):
		v.NotRead = "the damaged log above keeps the store from opening"
		return v, nil
	case err != nil:
		v.NotRead = err.Error()
		v.Damaged = errors.Is(err, idem.ErrCorrupt)
		return v, nil
	}
	defer s.Close()
	ctx := context.Background()
	c, err := s.Census(ctx, "", 0)
	if err != nil {
		return nil, err
	}
	r := &verifyRecs{Good: c.Live(), Expired: c.Expired, Corrupt: c.Corrupt}
	if c.Corrupt > 0 {
		err := s.Scan(ctx, "", func(key string, _ *idem.Record, err error) error {
			if err != nil && len(r.CorruptKeys) < maxCorruptKeys {
				r.CorruptKeys = append(r.CorruptKeys, key)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		v.Damaged = true
	}
	v.Records = r
	return v, nil
}

func printVerify(w io.Writer, v *verifyReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "store:\t%s\n", v.Dir)
	manifest := "MANIFEST"
	if !v.Manifest {
		manifest = "no MANIFEST"
	}
	fmt.Fprintf(tw, "files:\t%s, %d tables, %d logs\n", manifest, v.Tables, len(v.Logs))
	switch {
	case v.Check == "":
		fmt.Fprintf(tw, "checks:\tok\n")
	case v.NeedsRecovery:
		fmt.Fprintf(tw, "checks:\tneeds recovery: %s\n", v.Check)
	default:
		fmt.Fprintf(tw, "checks:\tDAMAGED: %s\n", v.Check)
	}
	for _, l := range v.Logs {
		status := "ok"
		switch {
		case l.Error != "":
			status = "DAMAGED: " + l.Error
		case l.Damage != nil:
			status = fmt.Sprintf("DAMAGED at offset %d (%s): %d valid writes, %s, after it would be discarded by a read-write open",
				l.Damage.Offset, l.Damage.Reason, l.Damage.WritesAfter, bytesize(l.Damage.BytesAfter))
			if l.Damage.Unsure {
				status += " (the scan gave up before the end: there may be more)"
			}
			if l.Damage.ZeroFilled {
				status += "; the bad range is zero-filled pages, as a power loss leaves writes not yet synced"
			}
		case l.End < l.Size:
			status = "ok (ends where a crash left it: a read-write open cuts it there)"
		}
		fmt.Fprintf(tw, "log %s:\t%s, %d writes to offset %d\t%s\n", l.File, bytesize(l.Size), l.Writes, l.End, status)
	}
	switch {
	case v.Records != nil:
		r := v.Records
		fmt.Fprintf(tw, "records:\t%d good, %d expired, %d corrupt\n", r.Good, r.Expired, r.Corrupt)
		for _, k := range r.CorruptKeys {
			fmt.Fprintf(tw, "  corrupt:\t%q\n", k)
		}
	default:
		fmt.Fprintf(tw, "records:\tnot read: %s\n", v.NotRead)
	}
	result := "ok"
	switch {
	case v.Damaged:
		result = "DAMAGED"
	case v.NeedsRecovery:
		result = "ok so far; needs recovery (idem recover -data " + v.Dir + "), then verify again to read the records"
	}
	fmt.Fprintf(tw, "result:\t%s\n", result)
	return tw.Flush()
}
