package idem

import (
	"sync/atomic"
	"time"
)

// Stats is a snapshot of a store's counters since it was opened. Counters
// only grow; StaleLeases and the Last fields describe the latest
// background run. Its JSON form has snake_case keys; LastGC is RFC 3339
// and left out while there has been no run, and LastSweepTook is in
// nanoseconds.
type Stats struct {
	Hits       uint64 `json:"hits"`        // Get found a live record
	Misses     uint64 `json:"misses"`      // Get found nothing, or an expired record
	Leases     uint64 `json:"leases"`      // leases granted by Begin, takeovers included
	Takeovers  uint64 `json:"takeovers"`   // leases granted over a lapsed lease
	Conflicts  uint64 `json:"conflicts"`   // writes that lost a race and were retried from the winner's record
	Mismatches uint64 `json:"mismatches"`  // Begin refused a key reused with another fingerprint
	Replays    uint64 `json:"replays"`     // Begin answered with a finished record
	InProgress uint64 `json:"in_progress"` // Begin answered ErrInProgress
	LeaseLost  uint64 `json:"lease_lost"`  // Complete, Fail, Release or Extend refused by fencing
	Completed  uint64 `json:"completed"`   // leases ended by Complete
	Failed     uint64 `json:"failed"`      // leases ended by Fail
	Released   uint64 `json:"released"`    // leases ended by Release

	Sweeps        uint64        `json:"sweeps"`                  // background expiry runs
	SweptExpired  uint64        `json:"swept_expired"`           // expired records seen by sweeps, summed
	StaleLeases   int           `json:"stale_leases"`            // in-progress records with a lapsed lease and no takeover, at the last sweep
	GCRuns        uint64        `json:"gc_runs"`                 // backend garbage collections run
	GCReclaimed   int64         `json:"gc_reclaimed_bytes"`      // bytes of disk given back by them, summed
	LastGC        time.Time     `json:"last_gc,omitzero"`        // when the last run ended, by the store's clock
	LastGCErr     string        `json:"last_gc_error,omitempty"` // the last run's error, "" if none
	CacheHits     uint64        `json:"cache_hits"`              // answers from the read cache
	DiskBytes     int64         `json:"disk_bytes"`              // the backend's disk use at the last run, when it reports it
	LastSweepTook time.Duration `json:"last_sweep_took_ns"`      // how long the last sweep took
}

type counters struct {
	hits, misses, leases, takeovers, conflicts, mismatches, replays, inProgress atomic.Uint64
	leaseLost, completed, failed, released                                      atomic.Uint64
	sweeps, sweptExpired, gcRuns, cacheHits, getCacheHits                       atomic.Uint64
	gcReclaimed, diskBytes                                                      atomic.Int64
	staleLeases                                                                 atomic.Int64
	lastGC                                                                      atomic.Int64 // UnixNano
	lastSweepTook                                                               atomic.Int64
	lastGCErr                                                                   atomic.Value // string
}

// Stats returns a snapshot of the store's counters.
func (s *Store) Stats() Stats {
	c := &s.stats
	st := Stats{
		Hits: c.hits.Load() + c.getCacheHits.Load(), Misses: c.misses.Load(), Leases: c.leases.Load(), Takeovers: c.takeovers.Load(),
		Conflicts: c.conflicts.Load(), Mismatches: c.mismatches.Load(), Replays: c.replays.Load(),
		InProgress: c.inProgress.Load(), LeaseLost: c.leaseLost.Load(), Completed: c.completed.Load(),
		Failed: c.failed.Load(), Released: c.released.Load(),
		Sweeps: c.sweeps.Load(), SweptExpired: c.sweptExpired.Load(), StaleLeases: int(c.staleLeases.Load()),
		GCRuns: c.gcRuns.Load(), GCReclaimed: c.gcReclaimed.Load(), CacheHits: c.cacheHits.Load() + c.getCacheHits.Load(),
		DiskBytes: c.diskBytes.Load(), LastSweepTook: time.Duration(c.lastSweepTook.Load()),
	}
	if ns := c.lastGC.Load(); ns != 0 {
		st.LastGC = time.Unix(0, ns)
	}
	if e, ok := c.lastGCErr.Load().(string); ok {
		st.LastGCErr = e
	}
	return st
}
