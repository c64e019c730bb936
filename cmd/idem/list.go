package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
)

// listFlush is how many rows of a table are aligned together: the list
// streams, so it never holds more than this many rows.
const listFlush = 200

// errStop ends a list at its -limit.
var errStop = errors.New("limit reached")

func init() {
	register(&command{
		name:    "list",
		summary: "list records, filtered by state, scope, stale leases and age",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			sf := addStoreFlags(fs)
			state := fs.String("state", "", "only records in `STATE`: in-progress, completed, failed or corrupt")
			prefix := fs.String("prefix", "", "only keys that begin with `SCOPE`")
			stale := fs.Bool("stale", false, "only in-progress records whose lease has lapsed")
			olderThan := fs.Duration("older-than", 0, "only records created more than `DURATION` ago (e.g. 10m)")
			limit := fs.Int("limit", 100, "print at most `N` records (0: no limit)")
			asJSON := fs.Bool("json", false, "print one JSON object per line (response in base64)")
			admin := fs.String("admin", "", "list from a running server's admin endpoint at `ADDR` instead of -data")
			return func(args []string, stdout, stderr io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				if err := sf.notWithAdmin(*admin); err != nil {
					return err
				}
				f := idemadmin.Filter{Prefix: *prefix, State: *state, Stale: *stale, OlderThan: *olderThan, Limit: *limit}
				if err := f.Check(); err != nil {
					return usageErr("-%v", err)
				}
				if f.Limit > 0 {
					f.Limit++ // one more than is printed, to learn whether more match
				}
				now := time.Now()
				out := newLister(stdout, *asJSON, now)
				n := 0
				row := func(j idemadmin.Record) error {
					if *limit > 0 && n >= *limit {
						return errStop
					}
					n++
					return out.row(j)
				}
				var err error
				if *admin != "" {
					err = adminClient(*admin).List(context.Background(), f, row)
				} else {
					err = listFromStore(sf, f, now, stderr, row)
				}
				if ferr := out.flush(); ferr != nil && err == nil {
					err = ferr
				}
				if errors.Is(err, errStop) {
					fmt.Fprintf(stderr, "idem list: stopped after %d records (-limit); more may match\n", n)
					return nil
				}
				if err == nil && n == 0 && !*asJSON {
					fmt.Fprintln(stderr, "idem list: no records match")
				}
				return err
			}
		},
	})
}

// listFromStore calls row with each record of the store sf names that
// passes f.
func listFromStore(sf *storeFlags, f idemadmin.Filter, now time.Time, stderr io.Writer, row func(idemadmin.Record) error) error {
	s, err := openStore(sf, true, stderr)
	if err != nil {
		return err
	}
	defer s.Close()
	return idemadmin.List(context.Background(), s, f, now, func(_ *idem.Record, j idemadmin.Record) error {
		return row(j)
	})
}

// lister prints records as list does: an aligned table (its header with
// the first row), flushed every listFlush rows so that it streams, or one
// JSON object a line.
type lister struct {
	tw     *tabwriter.Writer
	enc    *json.Encoder
	asJSON bool
	now    time.Time
	n      int
}

func newLister(w io.Writer, asJSON bool, now time.Time) *lister {
	return &lister{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0), enc: json.NewEncoder(w), asJSON: asJSON, now: now}
}

func (l *lister) row(j idemadmin.Record) error {
	if l.asJSON {
		return l.enc.Encode(j)
	}
	if l.n == 0 {
		fmt.Fprintln(l.tw, "KEY\tSTATE\tATTEMPTS\tTOKEN\tAGE\tLEASE\tEXPIRES")
	}
	l.n++
	if j.State == idemadmin.StateCorrupt {
		fmt.Fprintf(l.tw, "%s\tcorrupt\t-\t-\t-\t-\t-\t%s\n", j.Key, j.Corrupt)
	} else {
		rec, err := j.ToRecord()
		if err != nil {
			return err
		}
		fmt.Fprintf(l.tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\n", rec.Key, rec.State, rec.Attempts, rec.Token,
			short(l.now.Sub(rec.CreatedAt)), leaseColumn(rec, l.now), relative(l.now, rec.ExpiresAt))
	}
	if l.n%listFlush == 0 {
		return l.tw.Flush()
	}
	return nil
}

func (l *lister) flush() error { return l.tw.Flush() }

func leaseColumn(rec *idem.Record, now time.Time) string {
	switch {
	case rec.State != idem.StateInProgress:
		return "-"
	case rec.LeaseLapsed(now):
		return "STALE " + ago(now, rec.LeaseUntil)
	}
	return "live, " + relative(now, rec.LeaseUntil)
}
