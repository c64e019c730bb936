package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/idemdb/idem"
)

func init() {
	register(&command{
		name:    "purge",
		summary: "delete every record of one scope (a tenant leaving), after a count and confirmation",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			sf := addStoreFlags(fs)
			prefix := fs.String("prefix", "", "delete the keys that begin with `SCOPE` (required)")
			yes := fs.Bool("yes", false, "do not ask for confirmation")
			return func(args []string, stdout, stderr io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				if *prefix == "" {
					return usageErr("-prefix is required (purging the whole store is not offered: remove the data directory)")
				}
				s, err := openStore(sf, false, stderr)
				if err != nil {
					return err
				}
				defer s.Close()
				ctx := context.Background()
				c, err := s.Census(ctx, *prefix, 0)
				if err != nil {
					return err
				}
				fmt.Fprintf(stdout, "%d records under %q: %d in-progress (%d stale), %d completed, %d failed, %d corrupt\n",
					c.Scanned, *prefix, c.Records[idem.StateInProgress], c.StaleLeases,
					c.Records[idem.StateCompleted], c.Records[idem.StateFailed], c.Corrupt)
				if c.Scanned == 0 {
					return nil
				}
				if err := confirm(stdout, *yes, "Delete all of them? Retries with these keys will run their requests again."); err != nil {
					return err
				}
				n, err := purge(ctx, s, *prefix)
				slog.New(slog.NewTextHandler(stderr, nil)).Warn("idem: operator repair", "op", "purge", "prefix", *prefix, "deleted", n)
				if err != nil {
					return fmt.Errorf("purge %q: %d records deleted, then: %w", *prefix, n, err)
				}
				fmt.Fprintf(stdout, "deleted %d records\n", n)
				return nil
			}
		},
	})
}

// purge deletes every record under prefix as the scan meets it, so that
// memory stays flat however many there are. Store.Delete inside Store.Scan
// takes the store's read lock twice, which is safe here: nothing in the
// command closes the store meanwhile.
func purge(ctx context.Context, s *idem.Store, prefix string) (int, error) {
	n := 0
	err := s.Scan(ctx, prefix, func(key string, _ *idem.Record, err error) error {
		if err != nil && !errors.Is(err, idem.ErrCorrupt) {
			return err
		}
		if err := s.Delete(ctx, key); err != nil {
			return err
		}
		n++
		return nil
	})
	return n, err
}
