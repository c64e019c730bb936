package idemadmin

import (
	"context"

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

// TakeStats takes the census of the records of s whose keys begin with
// prefix (Store.Census) and returns it with the disk use when the backend
// reports it.
func TakeStats(ctx context.Context, s *idem.Store, prefix string) (Stats, error) {
	c, err := s.Census(ctx, prefix, 0)
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
	}
	if c.OldestKey != "" {
		st.OldestInProgressSeconds = c.OldestInProgress.Seconds()
		st.OldestInProgressKey = c.OldestKey
	}
	if du := s.DiskUsage(); du >= 0 {
		st.DiskBytes = du
	}
	return st, nil
}
