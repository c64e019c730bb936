package main

import "strings"

// promises is what one side of a row guarantees, in five parts.
type promises struct {
	// Durable: when a stored outcome survives a crash. "fsync" (on disk
	// before the reply), "OS cache" (survives the process, not a power
	// loss within the kernel's write-back window), "Redis" (whatever the
	// server's own persistence gives: none in these runs), "memory"
	// (lost with the process).
	Durable string `json:"durable"`
	// Fenced: a holder whose lease lapsed and was taken over cannot
	// overwrite the newer outcome.
	Fenced bool `json:"fenced"`
	// Reuse: what a key reused with another request gets: "422" (refused;
	// ErrFingerprintMismatch in the store), "replay" (the first request's
	// response), "" (no notion of it).
	Reuse string `json:"reuse,omitempty"`
	// Running: what a duplicate gets while the first still runs: "409"
	// (refused with Retry-After; ErrInProgress in the store), "waits" (on
	// a lock in this process, then replayed), "NX" (exactly one claim
	// wins, the rest are told nothing more), "" (nothing).
	Running string `json:"running,omitempty"`
	// Instances: "1" (one process), "many" (every instance on one shared
	// store decides alike), "storage only" (records shared, the per-key
	// lock is per process: two instances can run one key at once).
	Instances string `json:"instances,omitempty"`
}

func (p promises) String() string {
	if p == (promises{}) {
		return "nothing"
	}
	var parts []string
	parts = append(parts, p.Durable)
	if p.Fenced {
		parts = append(parts, "fenced")
	} else {
		parts = append(parts, "not fenced")
	}
	if p.Reuse != "" {
		parts = append(parts, "reuse→"+p.Reuse)
	}
	if p.Running != "" {
		parts = append(parts, "running→"+p.Running)
	}
	if p.Instances != "" {
		parts = append(parts, "instances: "+p.Instances)
	}
	return strings.Join(parts, ", ")
}

var (
	nothing = promises{}

	idemFsync   = promises{Durable: "fsync", Fenced: true, Reuse: "422", Running: "409", Instances: "1"}
	idemOSCache = promises{Durable: "OS cache", Fenced: true, Reuse: "422", Running: "409", Instances: "1"}
	idemRedis   = promises{Durable: "Redis", Fenced: true, Reuse: "422", Running: "409", Instances: "many"}

	fiberMemory = promises{Durable: "memory", Reuse: "replay", Running: "waits", Instances: "1"}
	fiberRedis  = promises{Durable: "Redis", Reuse: "replay", Running: "waits", Instances: "storage only"}

	rawRedis        = promises{Durable: "Redis", Running: "NX", Instances: "many"}
	rawRedisRead    = promises{Durable: "Redis", Instances: "many"}
	rawBadger       = promises{Durable: "OS cache", Running: "NX", Instances: "1"}
	rawBadgerSynced = promises{Durable: "fsync", Running: "NX", Instances: "1"}
)

const legend = `Guarantees: durable = when a stored outcome survives a crash (fsync: on disk before the reply;
OS cache: survives the process, not a power loss in the kernel's write-back window; Redis: the server's
own persistence, none in this run; memory: lost with the process). fenced = a holder whose lease lapsed
cannot overwrite the newer outcome. reuse = what a key reused with another request gets (422: refused;
replay: the first response). running = what a duplicate gets while the first runs (409: refused with
Retry-After; waits: on a lock in this process; NX: one claim wins, nothing more). instances = 1 (one
process), many (instances on one store decide alike), storage only (records shared, lock per process).`
