package main

import (
	"crypto/sha256"
	"math/rand/v2"
	"time"

	"github.com/idemdb/idem"
)

// The store-level rows run the same request through idem and through
// hand-written code: a 32-byte fingerprint and a 100-byte response.
var (
	fingerprint = func() []byte { h := sha256.Sum256(reqBody); return h[:] }()
	response    = respBody[:100]
)

// handWritten returns the values a hand-written store writes for a claim
// and for its completion: idem's own encoding of the records idem writes,
// made once, so both sides move the same bytes and the baseline spends
// nothing on encoding.
func handWritten() (inProgress, completed []byte) {
	now := time.Now()
	r := idem.Record{Key: "00000000-0000-0000-8000-000000000000", State: idem.StateInProgress, Fingerprint: fingerprint,
		Attempts: 1, Token: 1, CreatedAt: now, UpdatedAt: now, LeaseUntil: now.Add(idem.DefaultLeaseTTL),
		ExpiresAt: now.Add(idem.DefaultCompletedTTL)}
	inProgress = idem.EncodeRecord(&r)
	r.State, r.Response, r.LeaseUntil = idem.StateCompleted, response, time.Time{}
	return inProgress, idem.EncodeRecord(&r)
}

// rngs returns one random source per worker.
func rngs(n int) []*rand.Rand {
	rs := make([]*rand.Rand, n)
	for i := range rs {
		rs[i] = rand.New(rand.NewPCG(uint64(i)+1, 42))
	}
	return rs
}
