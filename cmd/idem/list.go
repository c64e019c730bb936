package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
)

// listFlush is how many rows of a table are aligned together: the list
// streams, so it never holds more than this many rows.
const listFlush = 200

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
				if *limit < 0 || *olderThan < 0 {
					return usageErr("-limit and -older-than must not be negative")
				}
				if err := sf.notWithAdmin(*admin); err != nil {
					return err
				}
				f := idemadmin.Filter{Prefix: *prefix, State: *state, Stale: *stale, OlderThan: *olderThan}
				if err := f.Check(); err != nil {
					return usageErr("%v", err)
				}
				now := time.Now()
				out := newLister(stdout, *asJSON, now)
				var n int
				var err error
				if *admin != "" {
					n, err = listFromAdmin(*admin, f, *limit, out.row)
				} else {
					n, err = listFromStore(sf, f, *limit, now, stderr, out.row)
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
// passes f, up to limit (0: no limit; errStop when reached), and returns
// how many it passed on.
func listFromStore(sf *storeFlags, f idemadmin.Filter, limit int, now time.Time, stderr io.Writer, row func(idemadmin.Record) error) (int, error) {
	s, err := openStore(sf, true, stderr)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	n := 0
	err = idemadmin.List(context.Background(), s, f, now, func(_ *idem.Record, j idemadmin.Record) error {
		if limit > 0 && n >= limit {
			return errStop
		}
		n++
		return row(j)
	})
	return n, err
}

// listFromAdmin does the same through a running server's admin endpoint,
// asking for one record more than limit to learn whether more match.
func listFromAdmin(addr string, f idemadmin.Filter, limit int, row func(idemadmin.Record) error) (int, error) {
	q := url.Values{}
	for k, v := range map[string]string{"prefix": f.Prefix, "state": f.State} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.Stale {
		q.Set("stale", "true")
	}
	if f.OlderThan > 0 {
		q.Set("older-than", f.OlderThan.String())
	}
	q.Set("limit", "0")
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit+1))
	}
	n := 0
	err := streamJSON(addr, "/admin/records?"+q.Encode(), func(dec *json.Decoder) error {
		var line struct {
			idemadmin.Record
			Error string `json:"error"`
		}
		if err := dec.Decode(&line); err != nil {
			return err
		}
		if line.Error != "" {
			return fmt.Errorf("admin endpoint %s: the list broke off: %s", addr, line.Error)
		}
		j := line.Record
		if limit > 0 && n >= limit {
			return errStop
		}
		n++
		return row(j)
	})
	return n, err
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
