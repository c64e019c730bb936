package idem_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/idemdb/idem"
)

func ExampleStore_Do() {
	dir, _ := os.MkdirTemp("", "idem-example-")
	defer os.RemoveAll(dir)
	s, err := idem.Open(dir, nil)
	if err != nil {
		panic(err)
	}
	defer s.Close()

	ctx := context.Background()
	charges := 0
	charge := func(context.Context) ([]byte, error) {
		charges++
		return []byte("charged 5000 USD"), nil
	}
	for i := 0; i < 3; i++ {
		resp, replayed, err := s.Do(ctx, "order-42", []byte("POST /payments 5000 USD"), charge)
		fmt.Println(string(resp), replayed, err)
	}
	_, _, err = s.Do(ctx, "order-42", []byte("POST /payments 7000 USD"), charge)
	fmt.Println(errors.Is(err, idem.ErrFingerprintMismatch), "charges:", charges)
	// Output:
	// charged 5000 USD false <nil>
	// charged 5000 USD true <nil>
	// charged 5000 USD true <nil>
	// true charges: 1
}

func ExampleStore_Begin() {
	s, err := idem.Open("", &idem.Options{InMemory: true})
	if err != nil {
		panic(err)
	}
	defer s.Close()
	ctx := context.Background()

	lease, _, err := s.Begin(ctx, "order-43", []byte("fp"))
	if err != nil {
		panic(err)
	}
	// While the lease is held, other callers are told to come back later.
	_, rec, err := s.Begin(ctx, "order-43", []byte("fp"))
	fmt.Println(errors.Is(err, idem.ErrInProgress), rec.State)

	// Run the request, then store its outcome.
	if err := lease.Complete(ctx, []byte("created")); err != nil {
		panic(err)
	}
	lease, rec, err = s.Begin(ctx, "order-43", []byte("fp"))
	fmt.Println(lease == nil, rec.State, string(rec.Response), err)
	// Output:
	// true in-progress
	// true completed created <nil>
}
