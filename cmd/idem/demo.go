package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/idemdb/idem"
)

func init() {
	register(&command{
		name:    "demo",
		summary: "pay 5000 USD three times with one key over a flaky network: one charge",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			data := fs.String("data", "", "data directory (default: a fresh temporary one, removed afterwards)")
			return func(args []string, stdout, _ io.Writer) error {
				if len(args) > 0 {
					return usageErr("unexpected arguments %q", args)
				}
				return demo(*data, stdout)
			}
		},
	})
}

// errDropped is the simulated network losing the reply to the client.
var errDropped = errors.New("connection reset: reply lost")

func demo(dir string, w io.Writer) error {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "idem-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	s, err := idem.Open(dir, nil)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := context.Background()

	charges := 0
	pay := func(amount int) func(context.Context) ([]byte, error) {
		return func(context.Context) ([]byte, error) {
			charges++
			return fmt.Appendf(nil, "charge ch_%d: %d USD", charges, amount), nil
		}
	}
	fingerprint := func(amount int) []byte {
		sum := sha256.Sum256(fmt.Appendf(nil, "POST /payments amount=%d currency=USD", amount))
		return sum[:]
	}

	const key = "order-7f3a-payment"
	fmt.Fprintf(w, "Paying 5000 USD with idempotency key %q (store: %s)\n", key, dir)
	for attempt := 1; attempt <= 3; attempt++ {
		resp, replayed, err := s.Do(ctx, key, fingerprint(5000), pay(5000))
		if err != nil {
			return fmt.Errorf("attempt %d: %w", attempt, err)
		}
		// The network drops the first reply: the client sees an error and
		// retries with the same key.
		if attempt == 1 {
			fmt.Fprintf(w, "Attempt %d: completed (%s), but the reply was lost: %v\n", attempt, resp, errDropped)
			continue
		}
		status := "completed"
		if replayed {
			status = "completed (duplicate, returned cached)"
		}
		fmt.Fprintf(w, "Attempt %d: %s: %s\n", attempt, status, resp)
	}
	fmt.Fprintf(w, "Charges made: %d\n", charges)

	fmt.Fprintf(w, "\nReusing key %q for 7000 USD:\n", key)
	_, _, err = s.Do(ctx, key, fingerprint(7000), pay(7000))
	switch {
	case errors.Is(err, idem.ErrFingerprintMismatch):
		fmt.Fprintf(w, "Refused: %v\n", err)
	case err != nil:
		return err
	default:
		return errors.New("a reused key was accepted for another amount")
	}
	fmt.Fprintf(w, "Charges made: %d\n", charges)
	if charges != 1 {
		return fmt.Errorf("%d charges made, want 1", charges)
	}
	return nil
}
