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
// in between, the store refuses the repair (idem.ChangedError) and nothing
// is written. With -admin they go through a running server's admin
// endpoint, which answers the same way.

func init() {
	register(&command{
		name:    "release",
		args:    "KEY",
		summary: "free a stuck in-progress key: the next retry runs the request again",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			rf := addRepairFlags(fs)
			return func(args []string, stdout, stderr io.Writer) error {
				return rf.repair(args, stdout, stderr, repairOp{name: "release"}, func(rec *idem.Record) (string, error) {
					if err := needInProgress(rec, "release"); err != nil {
						return "", err
					}
					return fmt.Sprintf("Release %q (token %d)? The next retry with this key runs the request again.", rec.Key, rec.Token), nil
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
				op := repairOp{name: "fail", response: body, retryable: *retryable}
				return rf.repair(args, stdout, stderr, op, func(rec *idem.Record) (string, error) {
					if err := needInProgress(rec, "fail"); err != nil {
						return "", err
					}
					what := "retries get this failure (" + fmt.Sprint(len(body)) + " bytes) replayed"
					if *retryable {
						what = "the next retry runs the request again"
					}
					return fmt.Sprintf("Fail %q (token %d)? Then %s.", rec.Key, rec.Token, what), nil
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
				return rf.repair(args, stdout, stderr, repairOp{name: "delete"}, func(rec *idem.Record) (string, error) {
					q := fmt.Sprintf("Delete %q (%s, token %d)?", rec.Key, rec.State, rec.Token)
					switch {
					case rec.State == idem.StateCompleted:
						q += " It is COMPLETED: the next retry with this key runs the request AGAIN."
					case rec.State == idem.StateInProgress:
						q += " The next retry with this key runs the request again."
					}
					return q, nil
				})
			}
		},
	})
}

// repairFlags are the flags every repair takes besides the store's.
type repairFlags struct {
	store     *storeFlags
	admin     *string
	yes       *bool
	token     *uint64
	corruptOK bool // the repair can deal with a corrupt record (delete)
}

func addRepairFlags(fs *flag.FlagSet) *repairFlags {
	return &repairFlags{
		store: addStoreFlags(fs),
		admin: fs.String("admin", "", "repair through a running server's admin endpoint at `ADDR` (idem serve -admin-repairs) instead of -data"),
		yes:   fs.Bool("yes", false, "do not ask for confirmation"),
		token: fs.Uint64("token", 0, "refuse unless the record carries fencing token `N` (as shown by idem get)"),
	}
}

// repairOp is one repair: release, fail (with the failure's response and
// whether it is retryable) or delete.
type repairOp struct {
	name      string
	response  []byte
	retryable bool
}

// plan looks at the record shown to the operator and returns the question
// to confirm, or why the repair does not apply to it.
type plan func(rec *idem.Record) (question string, err error)

// repair runs one repair of the key in args: read and show the record,
// confirm, and apply op fenced on what was shown, on the store the flags
// name or through an admin endpoint.
func (rf *repairFlags) repair(args []string, stdout, stderr io.Writer, op repairOp, p plan) error {
	key, err := oneKey(args)
	if err != nil {
		return err
	}
	if err := rf.store.notWithAdmin(*rf.admin); err != nil {
		return err
	}
	var t repairTarget
	if *rf.admin != "" {
		t = adminClient(*rf.admin)
	} else {
		s, err := openStore(rf.store, false, stderr)
		if err != nil {
			return err
		}
		defer s.Close()
		t = s
	}
	ctx := context.Background()
	rec, err := t.Get(ctx, key)
	var question string
	shown := rec
	switch {
	case errors.Is(err, idem.ErrCorrupt):
		// Only delete can do anything with a record it cannot read.
		if !rf.corruptOK {
			return fmt.Errorf("%w\nthe record cannot be read, so it cannot be ended; `idem delete %s` removes it", err, key)
		}
		fmt.Fprintf(stdout, "key:         %s\nstate:       corrupt (%v)\n", key, err)
		question = fmt.Sprintf("Delete the corrupt record %q?", key)
	case err != nil:
		return err
	default:
		if err := printRecord(stdout, rec, time.Now()); err != nil {
			return err
		}
		if *rf.token != 0 {
			// The operator pinned the token they were shown before:
			// the repair is fenced on it.
			pinned := *rec
			pinned.Token = *rf.token
			shown = &pinned
		}
		if question, err = p(shown); err != nil {
			return err
		}
	}
	if err := confirm(stdout, *rf.yes, question); err != nil {
		return err
	}
	if err := op.apply(ctx, t, key, shown); err != nil {
		var changed *idem.ChangedError
		switch {
		case errors.As(err, &changed) && *rf.token != 0:
			return fmt.Errorf("refused, the record is not the one pinned with -token %d (run idem get %s again): %w", *rf.token, key, err)
		case errors.As(err, &changed):
			return fmt.Errorf("refused, the record changed since it was shown (run idem get %s again): %w", key, err)
		}
		return err
	}
	fmt.Fprintln(stdout, "done")
	return nil
}

// repairTarget is where a repair reads the record and applies the change:
// a store the command opened (*idem.Store), or a running server's admin
// endpoint (*idemadmin.Client), which answers as the store does.
type repairTarget interface {
	Get(ctx context.Context, key string) (*idem.Record, error)
	ForceRelease(ctx context.Context, key string, token uint64) error
	ForceFail(ctx context.Context, key string, token uint64, response []byte, retryable bool) error
	ForceDelete(ctx context.Context, key string, seen *idem.Record) error
}

// apply makes op on t fenced on shown, the record shown (nil: the corrupt
// record).
func (op repairOp) apply(ctx context.Context, t repairTarget, key string, shown *idem.Record) error {
	switch {
	case shown == nil:
		return t.ForceDelete(ctx, key, nil)
	case op.name == "release":
		return t.ForceRelease(ctx, key, shown.Token)
	case op.name == "fail":
		return t.ForceFail(ctx, key, shown.Token, op.response, op.retryable)
	}
	return t.ForceDelete(ctx, key, shown)
}

func needInProgress(rec *idem.Record, verb string) error {
	if rec.State != idem.StateInProgress {
		return fmt.Errorf("%q is %s, not in progress: nothing to %s (idem delete removes a record whatever its state)", rec.Key, rec.State, verb)
	}
	return nil
}
