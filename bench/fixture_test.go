package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/storeinternal"
)

// The bench writes fixture records itself; they must be the bytes the
// store writes, or the measurements read something else than a store does.
func TestStoredForm(t *testing.T) {
	ctx := context.Background()
	s, err := idem.Open("", &idem.Options{InMemory: true, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now()
	var recs []*idem.Record
	for i := range 100 {
		recs = append(recs, completed(keyOf("req-", uint64(i)), now, 24*time.Hour))
	}
	// Other states and integer widths than the fixtures use.
	recs = append(recs,
		&idem.Record{Key: "failed", State: idem.StateFailed, Fingerprint: []byte{}, Response: bytes.Repeat([]byte("r"), 70000),
			Retryable: true, Attempts: 70000, Token: idem.MaxToken, CreatedAt: time.Unix(-5, 0), UpdatedAt: now, ExpiresAt: now.Add(time.Hour)},
		&idem.Record{Key: "in-progress", State: idem.StateInProgress, Attempts: 300, Token: 200, CreatedAt: now, UpdatedAt: now,
			LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(24 * time.Hour)},
	)
	for _, r := range recs {
		if err := s.Restore(ctx, r, false); err != nil {
			t.Fatal(err)
		}
		got, err := storeinternal.Backend(s).(idem.Backend).Load(ctx, r.Key)
		if err != nil {
			t.Fatal(err)
		}
		if want := storedForm(r); !bytes.Equal(got, want) {
			t.Fatalf("%s: the store wrote\n%x\nthe bench writes\n%x", r.Key, got, want)
		}
	}
}
