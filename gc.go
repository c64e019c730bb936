package idem

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// GCReport says what one run of background expiry found and did.
type GCReport struct {
	Records     int           // live records seen by the sweep
	Expired     int           // records past their expiry, still on disk
	StaleLeases int           // in-progress records whose lease lapsed with no takeover
	Corrupt     int           // records that could not be decoded
	DiskBefore  int64         // backend disk use before the collection, if it reports it
	DiskAfter   int64         // and after
	Took        time.Duration // by the real clock
}

// Reclaimed returns the bytes of disk the run gave back.
func (r GCReport) Reclaimed() int64 {
	if r.DiskBefore > r.DiskAfter {
		return r.DiskBefore - r.DiskAfter
	}
	return 0
}

func (s *Store) gcLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-s.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		rep, err := s.CollectGarbage(ctx)
		cancel()
		switch {
		case errors.Is(err, ErrClosed), errors.Is(err, context.Canceled):
			return
		case err != nil:
			s.log.Error("idem: background expiry failed", "err", err)
		default:
			s.log.Debug("idem: background expiry", "records", rep.Records, "expired", rep.Expired,
				"stale_leases", rep.StaleLeases, "reclaimed_bytes", rep.Reclaimed(), "took", rep.Took.String())
		}
	}
}

// CollectGarbage runs one round of background expiry now: a sweep that
// counts live, expired and corrupt records and the stale leases (in-progress
// records whose lease lapsed with no takeover), then the backend's own
// clean-up when it has one (for Badger: value-log GC and the compaction that
// drops expired entries from disk). The background loop calls it every
// Options.GCInterval; operators call it through `idem gc`.
func (s *Store) CollectGarbage(ctx context.Context) (GCReport, error) {
	var rep GCReport
	if err := s.enterWrite(); err != nil {
		return rep, fmt.Errorf("idem: gc: %w", err)
	}
	defer s.mu.RUnlock()
	start := time.Now()
	now := s.now()
	err := s.b.Scan(ctx, "", func(key string, value []byte) error {
		rec, err := decodeRecord(key, value)
		switch {
		case err != nil:
			rep.Corrupt++
		case rec.Expired(now):
			rep.Expired++
		default:
			rep.Records++
			if rec.LeaseLapsed(now) {
				rep.StaleLeases++
			}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("idem: gc: sweep: %w", err)
	}
	s.stats.sweeps.Add(1)
	s.stats.sweptExpired.Add(uint64(rep.Expired))
	s.stats.staleLeases.Store(int64(rep.StaleLeases))
	s.stats.lastSweepTook.Store(int64(time.Since(start)))
	if rep.StaleLeases > 0 {
		s.log.Warn("idem: stale leases found", "count", rep.StaleLeases)
	}
	if gc, ok := s.b.(GarbageCollector); ok {
		before, after, err := gc.CollectGarbage(ctx, rep.Records+rep.Expired+rep.Corrupt)
		rep.DiskBefore, rep.DiskAfter = before, after
		s.stats.gcRuns.Add(1)
		s.stats.gcReclaimed.Add(rep.Reclaimed())
		s.stats.diskBytes.Store(after)
		s.stats.lastGC.Store(s.now().UnixNano())
		if err != nil {
			s.stats.lastGCErr.Store(err.Error())
			return rep, fmt.Errorf("idem: gc: %w", err)
		}
		s.stats.lastGCErr.Store("")
	} else if du, ok := s.b.(DiskUser); ok {
		rep.DiskBefore = du.DiskUsage()
		rep.DiskAfter = rep.DiskBefore
	}
	rep.Took = time.Since(start)
	return rep, nil
}
