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
			return func(args []string, stdout, stderr io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				var want idem.State
				corruptOnly := *state == "corrupt"
				if *state != "" && !corruptOnly {
					st, err := idem.ParseState(*state)
					if err != nil {
						return usageErr("-state: %v", err)
					}
					want = st
				}
				if *limit < 0 || *olderThan < 0 {
					return usageErr("-limit and -older-than must not be negative")
				}
				s, err := openStore(sf, true, stderr)
				if err != nil {
					return err
				}
				defer s.Close()

				now := time.Now()
				filtered := want != 0 || *stale || *olderThan > 0
				tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
				enc := json.NewEncoder(stdout)
				if !*asJSON {
					fmt.Fprintln(tw, "KEY\tSTATE\tATTEMPTS\tTOKEN\tAGE\tLEASE\tEXPIRES")
				}
				n := 0
				err = s.Scan(context.Background(), *prefix, func(key string, rec *idem.Record, err error) error {
					if err != nil {
						if !errors.Is(err, idem.ErrCorrupt) {
							return err
						}
						if filtered {
							return nil // a corrupt record has no state, lease or age to match
						}
					} else if corruptOnly || !keep(rec, want, *stale, *olderThan, now) {
						return nil
					}
					if *limit > 0 && n >= *limit {
						return errStop
					}
					n++
					if *asJSON {
						if rec == nil {
							return enc.Encode(corruptJSON(key, err))
						}
						return enc.Encode(toJSON(rec))
					}
					if rec == nil {
						fmt.Fprintf(tw, "%s\tcorrupt\t-\t-\t-\t-\t-\t%v\n", key, err)
					} else {
						fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\n", key, rec.State, rec.Attempts, rec.Token,
							short(now.Sub(rec.CreatedAt)), leaseColumn(rec, now), relative(now, rec.ExpiresAt))
					}
					if n%listFlush == 0 {
						return tw.Flush()
					}
					return nil
				})
				if ferr := tw.Flush(); ferr != nil && err == nil {
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

// keep says whether rec passes list's filters.
func keep(rec *idem.Record, want idem.State, stale bool, olderThan time.Duration, now time.Time) bool {
	switch {
	case want != 0 && rec.State != want:
		return false
	case stale && !rec.LeaseLapsed(now):
		return false
	case olderThan > 0 && now.Sub(rec.CreatedAt) < olderThan:
		return false
	}
	return true
}

func leaseColumn(rec *idem.Record, now time.Time) string {
	switch {
	case rec.State != idem.StateInProgress:
		return "-"
	case rec.LeaseLapsed(now):
		return "STALE " + ago(now, rec.LeaseUntil)
	}
	return "live, " + relative(now, rec.LeaseUntil)
}
