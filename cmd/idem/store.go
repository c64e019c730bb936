package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/idemdb/idem"
)

// storeFlags say which store a command works on. Every command that opens
// a store registers them with addStoreFlags and opens it with openStore.
type storeFlags struct {
	data string // Badger data directory
}

func addStoreFlags(fs *flag.FlagSet) *storeFlags {
	f := &storeFlags{}
	fs.StringVar(&f.data, "data", "", "data directory of the Badger store (required)")
	return f
}

// openStore opens the store f names. readOnly asks for a read-only open,
// which shares the directory with other readers; commands that only look
// use it. The store logs to stderr (repairs, takeovers) and runs no
// background expiry. A directory held by another process gives an error
// wrapping idem.ErrLocked that says where to look instead.
func openStore(f *storeFlags, readOnly bool, stderr io.Writer) (*idem.Store, error) {
	if f.data == "" {
		return nil, usageErr("no store given: pass -data DIR")
	}
	if _, err := os.Stat(f.data); err != nil {
		return nil, fmt.Errorf("no store at %s: %w", f.data, err)
	}
	opts := &idem.Options{
		GCInterval: -1,
		ReadOnly:   readOnly,
		Logger:     slog.New(slog.NewTextHandler(stderr, nil)),
	}
	s, err := idem.Open(f.data, opts)
	if errors.Is(err, idem.ErrLocked) {
		return nil, fmt.Errorf("%s is in use by another process (a running idem server or application; Badger allows one process per directory): "+
			"read it through that process's admin endpoint instead (idem get -admin ADDR KEY, idem stats -admin ADDR, "+
			"or curl http://ADDR/admin/stats; see idem serve -admin), or stop that process to repair the store: %w", f.data, idem.ErrLocked)
	}
	return s, err
}
