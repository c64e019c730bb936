package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
)

func init() {
	register(&command{
		name:    "gc",
		summary: "run expiry and garbage collection now and report what it reclaimed",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			sf := addStoreFlags(fs)
			asJSON := fs.Bool("json", false, "print JSON")
			return func(args []string, stdout, stderr io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				s, err := openStore(sf, false, stderr)
				if err != nil {
					return err
				}
				defer s.Close()
				rep, err := s.CollectGarbage(context.Background())
				if err != nil {
					return err
				}
				if *asJSON {
					return json.NewEncoder(stdout).Encode(map[string]any{
						"records": rep.Records, "expired": rep.Expired, "stale_leases": rep.StaleLeases,
						"corrupt": rep.Corrupt, "disk_before": rep.DiskBefore, "disk_after": rep.DiskAfter,
						"reclaimed": rep.Reclaimed(), "took_seconds": rep.Took.Seconds(),
					})
				}
				tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "live records:\t%d\n", rep.Records)
				fmt.Fprintf(tw, "expired, still on disk:\t%d\n", rep.Expired)
				fmt.Fprintf(tw, "stale leases:\t%d\n", rep.StaleLeases)
				fmt.Fprintf(tw, "corrupt:\t%d\n", rep.Corrupt)
				fmt.Fprintf(tw, "disk:\t%s -> %s (reclaimed %s)\n", bytesize(rep.DiskBefore), bytesize(rep.DiskAfter), bytesize(rep.Reclaimed()))
				fmt.Fprintf(tw, "took:\t%s\n", rep.Took.Round(1e6))
				return tw.Flush()
			}
		},
	})
}
