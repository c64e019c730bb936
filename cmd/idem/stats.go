package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/idemdb/idem/idemadmin"
)

func init() {
	register(&command{
		name:    "stats",
		summary: "count records by state, stale leases, the oldest in-progress record and disk use",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			sf := addStoreFlags(fs)
			prefix := fs.String("prefix", "", "count only keys that begin with `SCOPE`")
			asJSON := fs.Bool("json", false, "print JSON")
			admin := fs.String("admin", "", "ask a running server's admin endpoint at `ADDR` (adds its live counters) instead of -data")
			return func(args []string, stdout, stderr io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				if err := sf.notWithAdmin(*admin); err != nil {
					return err
				}
				var st idemadmin.Stats
				if *admin != "" {
					var err error
					if st, err = adminClient(*admin).Stats(context.Background(), *prefix); err != nil {
						return err
					}
				} else {
					s, err := openStore(sf, true, stderr)
					if err != nil {
						return err
					}
					defer s.Close()
					if st, err = idemadmin.TakeStats(context.Background(), s, *prefix); err != nil {
						return err
					}
				}
				if *asJSON {
					return json.NewEncoder(stdout).Encode(st)
				}
				return printStats(stdout, &st)
			}
		},
	})
}

func printStats(w io.Writer, st *idemadmin.Stats) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "records:\t%d\n", st.Records.Total())
	fmt.Fprintf(tw, "  in-progress:\t%d\t(%d stale: lease lapsed with no takeover)\n", st.Records.InProgress, st.StaleLeases)
	fmt.Fprintf(tw, "  completed:\t%d\n", st.Records.Completed)
	fmt.Fprintf(tw, "  failed:\t%d\n", st.Records.Failed)
	fmt.Fprintf(tw, "corrupt:\t%d\n", st.Corrupt)
	if st.OldestInProgressKey != "" {
		fmt.Fprintf(tw, "oldest in-progress:\t%s\t(key %s)\n", short(time.Duration(st.OldestInProgressSeconds*float64(time.Second))), st.OldestInProgressKey)
	} else {
		fmt.Fprintf(tw, "oldest in-progress:\t-\n")
	}
	if st.Truncated {
		fmt.Fprintf(tw, "census:\t%d records read\t(it stopped at its limit: the counts above are lower bounds)\n", st.Scanned)
	}
	if st.DiskBytes > 0 {
		fmt.Fprintf(tw, "disk:\t%s\n", bytesize(st.DiskBytes))
		if st.DiskFreeBytes > 0 {
			fmt.Fprintf(tw, "disk free:\t%s\t(writes are refused below the reserve, idem.Options.DiskReserve)\n", bytesize(st.DiskFreeBytes))
		}
	} else {
		fmt.Fprintf(tw, "disk:\t-\t(not reported by this backend)\n") // Redis
	}
	if c := st.Counters; c != nil {
		fmt.Fprintf(tw, "\nsince the server started:\t\n")
		for _, row := range []struct {
			name string
			v    uint64
		}{
			{"leases", c.Leases}, {"takeovers", c.Takeovers}, {"replays", c.Replays},
			{"in-progress answers", c.InProgress}, {"mismatches", c.Mismatches}, {"lease lost", c.LeaseLost},
			{"completed", c.Completed}, {"failed", c.Failed}, {"released", c.Released},
			{"get hits", c.Hits}, {"get misses", c.Misses}, {"conflicts", c.Conflicts}, {"gc runs", c.GCRuns},
		} {
			fmt.Fprintf(tw, "  %s:\t%d\n", row.name, row.v)
		}
		fmt.Fprintf(tw, "  gc reclaimed:\t%s\n", bytesize(c.GCReclaimed))
	}
	return tw.Flush()
}

// bytesize formats n bytes for people: "812 B", "1.2 MiB".
func bytesize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
