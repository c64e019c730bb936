package idemadmin

import (
	"context"
	"sync"
	"time"

	"github.com/idemdb/idem"
)

// Stats is a census of a store: its records by state, the corrupt ones,
// the stale leases and the oldest in-progress record, with its disk use
// and, from a running store, its counters. Its JSON form, the body of
// GET /admin/stats and of idem stats -json, has snake_case keys
// throughout; ages are in seconds.
type Stats struct {
	Records                 RecordCounts `json:"records"`
	Corrupt                 int          `json:"corrupt"`
	StaleLeases             int          `json:"stale_leases"`
	OldestInProgressSeconds float64      `json:"oldest_in_progress_seconds"`
	OldestInProgressKey     string       `json:"oldest_in_progress_key,omitempty"`
	DiskBytes               int64        `json:"disk_bytes"`
	// DiskFreeBytes is the space free on the data directory's file system
	// (embedded store only; 0 when not reported): writes are refused with
	// idem.ErrNoSpace while it is below idem.Options.DiskReserve.
	DiskFreeBytes int64 `json:"disk_free_bytes,omitempty"`
	// Scanned is how many records the census read, expired ones
	// included. Truncated says it stopped at its limit before the end:
	// the counts are then lower bounds. TakenAt is when it was taken;
	// the admin endpoint answers from a census a few seconds old
	// (Options.StatsMaxAge).
	Scanned   int        `json:"scanned"`
	Truncated bool       `json:"truncated"`
	TakenAt   *time.Time `json:"taken_at,omitempty"`
	// Counters are the store's Stats since it was opened: set by the admin
	// endpoint of a running store.
	Counters *idem.Stats `json:"counters,omitempty"`
}

// RecordCounts are the live records of a census by state.
type RecordCounts struct {
	InProgress int `json:"in_progress"`
	Completed  int `json:"completed"`
	Failed     int `json:"failed"`
}

// Total returns the number of live records, in every state.
func (c RecordCounts) Total() int { return c.InProgress + c.Completed + c.Failed }

// TakeStats takes the census of all the records of s whose keys begin
// with prefix (Store.Census) and returns it with the disk use when the
// backend reports it.
func TakeStats(ctx context.Context, s *idem.Store, prefix string) (Stats, error) {
	return takeStats(ctx, s, prefix, 0)
}

// takeStats is TakeStats reading at most limit records (0: all).
func takeStats(ctx context.Context, s *idem.Store, prefix string, limit int) (Stats, error) {
	c, err := s.Census(ctx, prefix, limit)
	if err != nil {
		return Stats{}, err
	}
	st := Stats{
		Records: RecordCounts{
			InProgress: c.Records[idem.StateInProgress],
			Completed:  c.Records[idem.StateCompleted],
			Failed:     c.Records[idem.StateFailed],
		},
		Corrupt:     c.Corrupt,
		StaleLeases: c.StaleLeases,
		Scanned:     c.Scanned,
		Truncated:   c.Truncated,
		TakenAt:     timePtr(c.At),
	}
	if c.OldestKey != "" {
		st.OldestInProgressSeconds = c.OldestInProgress.Seconds()
		st.OldestInProgressKey = c.OldestKey
	}
	if du := s.DiskUsage(); du >= 0 {
		st.DiskBytes = du
	}
	if free := s.DiskFree(); free >= 0 {
		st.DiskFreeBytes = free
	}
	return st, nil
}

// statsCache keeps the admin endpoint's last census of each prefix for
// maxAge, so that callers in a loop share one census instead of each
// scanning the store. Callers that arrive while a census is being taken
// wait for it. It is safe for simultaneous use by multiple goroutines.
type statsCache struct {
	maxAge time.Duration                                           // how long a census is served; <= 0: never kept
	take   func(ctx context.Context, prefix string) (Stats, error) // takes a census
	now    func() time.Time                                        // the real clock

	mu      sync.Mutex // protects entries
	entries map[string]*statsEntry
}

// maxCachedPrefixes bounds the censuses kept: past it, the stale ones
// are dropped when a new one is taken.
const maxCachedPrefixes = 64

type statsEntry struct {
	done chan struct{} // closed when st and err are set
	st   Stats
	err  error
	at   time.Time // when the census was taken, by the real clock
}

// get returns a census of prefix no older than maxAge, taking one if
// there is none, or the error of taking it.
func (c *statsCache) get(ctx context.Context, prefix string) (Stats, error) {
	c.mu.Lock()
	e := c.entries[prefix]
	if e == nil || (e.ready() && (e.err != nil || c.now().Sub(e.at) >= c.maxAge)) {
		e = &statsEntry{done: make(chan struct{})}
		if len(c.entries) >= maxCachedPrefixes {
			for p, old := range c.entries {
				if old.ready() && c.now().Sub(old.at) >= c.maxAge {
					delete(c.entries, p)
				}
			}
		}
		if c.entries == nil {
			c.entries = map[string]*statsEntry{}
		}
		if len(c.entries) < maxCachedPrefixes {
			c.entries[prefix] = e
		}
		c.mu.Unlock()
		e.st, e.err = c.take(ctx, prefix)
		e.at = c.now()
		close(e.done)
		return e.st, e.err
	}
	c.mu.Unlock()
	select {
	case <-e.done:
		return e.st, e.err
	case <-ctx.Done():
		return Stats{}, ctx.Err()
	}
}

func (e *statsEntry) ready() bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}
