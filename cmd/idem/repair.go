package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
)

// The repairs: release, fail and delete. Each reads the record, shows it,
// asks for confirmation and applies the change fenced on what it showed
// (idem.Store.ForceRelease, ForceFail, ForceDelete): if the record changed
// in between, the repair is refused and nothing is written. With -admin
// they go through a running server's admin endpoint, which applies the
// same fenced transitions.

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
	var t repairTarget
	if err := rf.store.notWithAdmin(*rf.admin); err != nil {
		return err
	}
	if *rf.admin != "" {
		t = adminTarget(*rf.admin)
	} else {
		s, err := openStore(rf.store, false, stderr)
		if err != nil {
			return err
		}
		defer s.Close()
		t = storeTarget{s}
	}
	rec, err := t.get(key)
	var question string
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
		if *rf.token != 0 && rec.Token != *rf.token {
			return fmt.Errorf("%q carries token %d, not %d (-token): it changed since you looked; nothing changed", key, rec.Token, *rf.token)
		}
		if err := printRecord(stdout, rec, time.Now()); err != nil {
			return err
		}
		if question, err = p(rec); err != nil {
			return err
		}
	}
	if err := confirm(stdout, *rf.yes, question); err != nil {
		return err
	}
	if err := t.apply(key, rec, op); err != nil {
		if errors.Is(err, idem.ErrLeaseLost) || errors.Is(err, errRefused) {
			return fmt.Errorf("refused, the record changed since it was shown (run idem get %s again): %w", key, err)
		}
		return err
	}
	fmt.Fprintln(stdout, "done")
	return nil
}

// repairTarget is where a repair reads the record and applies the change:
// a store the command opened, or a running server's admin endpoint.
type repairTarget interface {
	// get returns key's record, or an error wrapping idem.ErrCorrupt for
	// one that cannot be decoded.
	get(key string) (*idem.Record, error)
	// apply makes op fenced on rec, the record shown (nil: the corrupt
	// record).
	apply(key string, rec *idem.Record, op repairOp) error
}

type storeTarget struct{ s *idem.Store }

func (t storeTarget) get(key string) (*idem.Record, error) {
	return t.s.Get(context.Background(), key)
}

func (t storeTarget) apply(key string, rec *idem.Record, op repairOp) error {
	ctx := context.Background()
	switch {
	case rec == nil:
		return t.s.ForceDelete(ctx, key, nil)
	case op.name == "release":
		return t.s.ForceRelease(ctx, key, rec.Token)
	case op.name == "fail":
		return t.s.ForceFail(ctx, key, rec.Token, op.response, op.retryable)
	default:
		return t.s.ForceDelete(ctx, key, rec)
	}
}

type adminTarget string

func (addr adminTarget) get(key string) (*idem.Record, error) {
	var j idemadmin.Record
	if err := fetchJSON(string(addr), "/admin/records/"+keyPath(key), &j); err != nil {
		return nil, err
	}
	if j.State == idemadmin.StateCorrupt {
		return nil, fmt.Errorf("%w (from %s): %s", idem.ErrCorrupt, addr, j.Corrupt)
	}
	return j.ToRecord()
}

func (addr adminTarget) apply(key string, rec *idem.Record, op repairOp) error {
	req := idemadmin.RepairRequest{Response: op.response, Retryable: op.retryable}
	if rec == nil {
		req.Corrupt = true
	} else {
		req.Token, req.State = rec.Token, rec.State.String()
	}
	return adminCall(string(addr), http.MethodPost, "/admin/"+op.name+"/"+keyPath(key), req,
		func(r io.Reader) error { _, err := io.Copy(io.Discard, r); return err })
}

// keyPath returns key as one segment of an admin endpoint's URL path. The
// keys "." and ".." are escaped in full: as they are, the server's path
// cleaning would remove them.
func keyPath(key string) string {
	if key == "." || key == ".." {
		return strings.Repeat("%2E", len(key))
	}
	return url.PathEscape(key)
}

func needInProgress(rec *idem.Record, verb string) error {
	if rec.State != idem.StateInProgress {
		return fmt.Errorf("%q is %s, not in progress: nothing to %s (idem delete removes a record whatever its state)", rec.Key, rec.State, verb)
	}
	return nil
}
