package main

import (
	"flag"
	"fmt"
	"io"
)

func init() {
	register(&command{
		name:    "recover",
		summary: "open a Badger store read-write once, replaying what a crash left, so that read-only commands can read it",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			sf := addStoreFlags(fs)
			fs.BoolVar(&sf.discardLog, "discard-damaged-log", false, "open a store whose log is damaged in its middle, keeping what precedes the damage and discarding the rest (see idem verify)")
			return func(args []string, stdout, stderr io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				if sf.redis != "" {
					return usageErr("recover applies to a Badger store (-data)")
				}
				s, err := openStore(sf, false, stderr)
				if err != nil {
					return err
				}
				if err := s.Close(); err != nil {
					return err
				}
				fmt.Fprintf(stdout, "%s: recovered and closed cleanly\n", sf.dir())
				return nil
			}
		},
	})
}
