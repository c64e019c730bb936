package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
)

func init() {
	register(&command{
		name:    "get",
		args:    "KEY",
		summary: "show one record: state, lease, timestamps and a preview of the response",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			sf := addStoreFlags(fs)
			asJSON := fs.Bool("json", false, "print the whole record as JSON (response in base64)")
			admin := fs.String("admin", "", "read the record from a running server's admin endpoint at `ADDR` instead of -data")
			return func(args []string, stdout, stderr io.Writer) error {
				key, err := oneKey(args)
				if err != nil {
					return err
				}
				if err := sf.notWithAdmin(*admin); err != nil {
					return err
				}
				var rec *idem.Record
				if *admin != "" {
					rec, err = getFromAdmin(*admin, key)
				} else {
					rec, err = getFromStore(sf, key, stderr)
				}
				if err != nil {
					return err
				}
				if *asJSON {
					return json.NewEncoder(stdout).Encode(idemadmin.FromRecord(rec))
				}
				return printRecord(stdout, rec, time.Now())
			}
		},
	})
}

func getFromStore(sf *storeFlags, key string, stderr io.Writer) (*idem.Record, error) {
	s, err := openStore(sf, true, stderr)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	rec, err := s.Get(context.Background(), key)
	if errors.Is(err, idem.ErrCorrupt) {
		return nil, fmt.Errorf("%w\nthe record under %q cannot be read; `idem delete %s` removes it", err, key, key)
	}
	return rec, err
}

func getFromAdmin(addr, key string) (*idem.Record, error) {
	rec, err := adminClient(addr).Get(context.Background(), key)
	if errors.Is(err, idem.ErrCorrupt) {
		return nil, fmt.Errorf("%w\nthe record under %q cannot be read; `idem delete -admin %s %s` removes it", err, key, addr, key)
	}
	return rec, err
}
