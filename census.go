package idem

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Census is what one scan of a store's records found, judged by the
// store's clock.
type Census struct {
	Records     map[State]int // live records by state
	Expired     int           // records past their expiry that the backend still holds
	Corrupt     int           // records that could not be decoded
	StaleLeases int           // in-progress records whose lease lapsed with no takeover
	// OldestInProgress is the age, at the census, of the oldest in-progress
	// record (by CreatedAt), and OldestKey its key; zero and "" when there
	// is none.
	OldestInProgress time.Duration
	OldestKey        string
	Scanned          int           // records read, expired ones included
	Truncated        bool          // the scan stopped at its limit: the counts are lower bounds
	At               time.Time     // when it was taken, by the store's clock
	Took             time.Duration // by the real clock
}

// Live returns the number of live records, in every state.
func (c *Census) Live() int {
	n := 0
	for _, v := range c.Records {
		n += v
	}
	return n
}

var errCensusLimit = errors.New("idem: census limit reached")

// Census counts the records whose key begins with prefix by state, with
// the stale leases and the oldest in-progress record, judged by the
// store's clock. It reads at most limit records (limit <= 0 means all of
// them) and marks the census Truncated when it stops early. Its cost is
// one scan of the backend: every record read is decoded (about 1.5µs each
// on the embedded store), and at most one is held in memory at a time.
// Background expiry, the idem command, the admin endpoints and the
// Prometheus collector all count through it.
func (s *Store) Census(ctx context.Context, prefix string, limit int) (Census, error) {
	if err := s.enter(); err != nil {
		return Census{}, fmt.Errorf("idem: census: %w", err)
	}
	defer s.mu.RUnlock()
	c, err := s.census(ctx, prefix, limit)
	if err != nil {
		return c, fmt.Errorf("idem: census: %w", err)
	}
	return c, nil
}

func (s *Store) census(ctx context.Context, prefix string, limit int) (Census, error) {
	start := time.Now()
	now := s.now()
	c := Census{Records: map[State]int{}, At: now}
	err := s.b.Scan(ctx, prefix, func(key string, value []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if limit > 0 && c.Scanned >= limit {
			c.Truncated = true
			return errCensusLimit
		}
		c.Scanned++
		rec, err := decodeRecord(key, value)
		switch {
		case err != nil:
			c.Corrupt++
		case rec.Expired(now):
			c.Expired++
		default:
			c.Records[rec.State]++
			if rec.State == StateInProgress {
				if rec.LeaseLapsed(now) || s.holderGone(rec) {
					c.StaleLeases++
				}
				if age := now.Sub(rec.CreatedAt); c.OldestKey == "" || age > c.OldestInProgress {
					c.OldestInProgress, c.OldestKey = age, key
				}
			}
		}
		return nil
	})
	c.Took = time.Since(start)
	if err != nil && !errors.Is(err, errCensusLimit) {
		return c, err
	}
	return c, nil
}
