package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
)

func init() {
	register(&command{
		name:    "export",
		summary: "write records as JSON lines, one record per line (response in base64), for backup or moving",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			sf := addStoreFlags(fs)
			prefix := fs.String("prefix", "", "only keys that begin with `SCOPE`")
			out := fs.String("o", "", "write to `FILE` instead of standard output")
			return func(args []string, stdout, stderr io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				s, err := openStore(sf, true, stderr)
				if err != nil {
					return err
				}
				defer s.Close()
				w := stdout
				var f *os.File
				if *out != "" {
					if f, err = os.Create(*out); err != nil {
						return err
					}
					defer f.Close()
					w = f
				}
				bw := bufio.NewWriter(w)
				enc := json.NewEncoder(bw)
				n, corrupt := 0, 0
				err = s.Scan(context.Background(), *prefix, func(key string, rec *idem.Record, err error) error {
					if err != nil {
						if !errors.Is(err, idem.ErrCorrupt) {
							return err
						}
						corrupt++
						fmt.Fprintf(stderr, "idem export: skipping %q: %v\n", key, err)
						return nil
					}
					n++
					return enc.Encode(idemadmin.FromRecord(rec))
				})
				if err == nil {
					err = bw.Flush()
				}
				if err == nil && f != nil {
					err = f.Sync()
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(stderr, "idem export: %d records written\n", n)
				if corrupt > 0 {
					return fmt.Errorf("%d corrupt records could not be exported (listed above)", corrupt)
				}
				return nil
			}
		},
	})
}
