package main

import (
	"crypto/sha256"
	"math/rand/v2"
	"time"

	"github.com/idemdb/idem"
	"github.com/vmihailenco/msgpack/v5"
)

// The store-level rows run the same request through idem and through
// hand-written code: a 32-byte fingerprint and a 100-byte response.
var (
	fingerprint = func() []byte { h := sha256.Sum256(reqBody); return h[:] }()
	response    = respBody[:100]
)

// handWritten returns the values a hand-written store writes for a claim
// and for its completion: msgpack arrays of the fields idem stores (its
// layout, with the holder epoch and checksum as zeros), made once, so both
// sides move about the same bytes and the baseline spends nothing on
// encoding.
func handWritten() (inProgress, completed []byte) {
	now := time.Now()
	enc := func(state int, resp []byte, leaseUntil int64) []byte {
		b, err := msgpack.Marshal([]any{1, state, fingerprint, resp, false, 1, uint64(1), now.UnixNano(), now.UnixNano(),
			leaseUntil, now.Add(idem.DefaultCompletedTTL).UnixNano(), 0, uint32(0)})
		if err != nil {
			panic(err)
		}
		return b
	}
	return enc(int(idem.StateInProgress), nil, now.Add(idem.DefaultLeaseTTL).UnixNano()),
		enc(int(idem.StateCompleted), response, 0)
}

// rngs returns one random source per worker.
func rngs(n int) []*rand.Rand {
	rs := make([]*rand.Rand, n)
	for i := range rs {
		rs[i] = rand.New(rand.NewPCG(uint64(i)+1, 42))
	}
	return rs
}
