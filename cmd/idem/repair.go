package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/idemdb/idem"
)

// The repairs: release, fail and delete. Each reads the record, shows it,
// asks for confirmation and applies the change fenced on what it showed
// (idem.Store.ForceRelease, ForceFail, ForceDelete): if the record changed
// in between, the repair is refused and nothing is written.

func init() {
	register(&command{
		name:    "release",
		args:    "KEY",
		summary: "free a stuck in-progress key: the next retry runs the request again",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			rf := addRepairFlags(fs)
			return func(args []string, stdout, stderr io.Writer) error {
				return rf.repair(args, stdout, stderr, func(ctx context.Context, s *idem.Store, rec *idem.Record) (string, func() error, error) {
					if err := needInProgress(rec, "release"); err != nil {
						return "", nil, err
					}
					q := fmt.Sprintf("Release %q (token %d)? The next retry with this key runs the request again.", rec.Key, rec.Token)
					return q, func() error { return s.ForceRelease(ctx, rec.Key, rec.Token) }, nil
				})
			}
		},
	})
	register(&command{
		name:    "fail",
		args:    "KEY",
		summary: "end a stuck in-progress key as failed: replayed to retries, or retryable",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			rf := addRepairFlags(fs)
			response := fs.String("response", "", "the failure's response `TEXT`, replayed to retries")
			responseFile := fs.String("response-file", "", "read the failure's response from `FILE`")
			retryable := fs.Bool("retryable", false, "let the next retry run the request again instead of replaying the failure")
			return func(args []string, stdout, stderr io.Writer) error {
				body := []byte(*response)
				if *responseFile != "" {
					if *response != "" {
						return usageErr("give -response or -response-file, not both")
					}
					var err error
					if body, err = os.ReadFile(*responseFile); err != nil {
						return err
					}
				}
				return rf.repair(args, stdout, stderr, func(ctx context.Context, s *idem.Store, rec *idem.Record) (string, func() error, error) {
					if err := needInProgress(rec, "fail"); err != nil {
						return "", nil, err
					}
					what := "retries get this failure (" + fmt.Sprint(len(body)) + " bytes) replayed"
					if *retryable {
						what = "the next retry runs the request again"
					}
					q := fmt.Sprintf("Fail %q (token %d)? Then %s.", rec.Key, rec.Token, what)
					return q, func() error { return s.ForceFail(ctx, rec.Key, rec.Token, body, *retryable) }, nil
				})
			}
		},
	})
	register(&command{
		name:    "delete",
		args:    "KEY",
		summary: "delete one record, whatever its state (also a corrupt one)",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			rf := addRepairFlags(fs)
			rf.corruptOK = true
			return func(args []string, stdout, stderr io.Writer) error {
				return rf.repair(args, stdout, stderr, func(ctx context.Context, s *idem.Store, rec *idem.Record) (string, func() error, error) {
					q := fmt.Sprintf("Delete %q (%s, token %d)?", rec.Key, rec.State, rec.Token)
					switch {
					case rec.State == idem.StateCompleted:
						q += " It is COMPLETED: the next retry with this key runs the request AGAIN."
					case rec.State == idem.StateInProgress:
						q += " The next retry with this key runs the request again."
					}
					return q, func() error { return s.ForceDelete(ctx, rec.Key, rec) }, nil
				})
			}
		},
	})
}

// repairFlags are the flags every repair takes besides the store's.
type repairFlags struct {
	store     *storeFlags
	yes       *bool
	token     *uint64
	corruptOK bool // the repair can deal with a corrupt record (delete)
}

func addRepairFlags(fs *flag.FlagSet) *repairFlags {
	return &repairFlags{
		store: addStoreFlags(fs),
		yes:   fs.Bool("yes", false, "do not ask for confirmation"),
		token: fs.Uint64("token", 0, "refuse unless the record carries fencing token `N` (as shown by idem get)"),
	}
}

// plan looks at the record shown to the operator and returns the question
// to confirm and the fenced change to apply, or why there is none.
type plan func(ctx context.Context, s *idem.Store, rec *idem.Record) (question string, apply func() error, err error)

// repair runs one repair of the key in args: open read-write, read and
// show the record, confirm, apply.
func (rf *repairFlags) repair(args []string, stdout, stderr io.Writer, p plan) error {
	key, err := oneKey(args)
	if err != nil {
		return err
	}
	s, err := openStore(rf.store, false, stderr)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := context.Background()
	rec, err := s.Get(ctx, key)
	var question string
	var apply func() error
	switch {
	case errors.Is(err, idem.ErrCorrupt):
		// Only delete can do anything with a record it cannot read.
		if !rf.corruptOK {
			return fmt.Errorf("%w\nthe record cannot be read, so it cannot be ended; `idem delete %s` removes it", err, key)
		}
		fmt.Fprintf(stdout, "key:         %s\nstate:       corrupt (%v)\n", key, err)
		question = fmt.Sprintf("Delete the corrupt record %q?", key)
		apply = func() error { return s.ForceDelete(ctx, key, nil) }
	case err != nil:
		return err
	default:
		if *rf.token != 0 && rec.Token != *rf.token {
			return fmt.Errorf("%q carries token %d, not %d (-token): it changed since you looked; nothing changed", key, rec.Token, *rf.token)
		}
		if err := printRecord(stdout, rec, time.Now()); err != nil {
			return err
		}
		if question, apply, err = p(ctx, s, rec); err != nil {
			return err
		}
	}
	if err := confirm(stdout, *rf.yes, question); err != nil {
		return err
	}
	if err := apply(); err != nil {
		if errors.Is(err, idem.ErrLeaseLost) {
			return fmt.Errorf("refused, the record changed since it was shown (run idem get %s again): %w", key, err)
		}
		return err
	}
	fmt.Fprintln(stdout, "done")
	return nil
}

func needInProgress(rec *idem.Record, verb string) error {
	if rec.State != idem.StateInProgress {
		return fmt.Errorf("%q is %s, not in progress: nothing to %s (idem delete removes a record whatever its state)", rec.Key, rec.State, verb)
	}
	return nil
}
