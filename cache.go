package idem

import (
	"bytes"
	"time"

	"github.com/dgraph-io/ristretto/v2"
)

// recordCache holds finished records (completed, or failed and not
// retryable). They do not change until they expire, so a cached copy is as
// good as a read, and it never decides a claim: a key that is not cached,
// or cached in any other state, goes to the backend.
type recordCache struct {
	c   *ristretto.Cache[string, *Record]
	ttl time.Duration
}

func newRecordCache(size int64, ttl time.Duration) *recordCache {
	c, err := ristretto.NewCache(&ristretto.Config[string, *Record]{
		NumCounters: max(size/100, 1000), // about ten per record of ~1 KiB
		MaxCost:     size,
		BufferItems: 64,
	})
	if err != nil {
		// Only a malformed Config errors, and this one is fixed.
		panic("idem: read cache: " + err.Error())
	}
	return &recordCache{c: c, ttl: ttl}
}

// get returns a copy of the cached record under key, or nil when it is not
// cached or has expired by the store's clock at now.
func (c *recordCache) get(key string, now time.Time) *Record {
	r, ok := c.c.Get(key)
	if !ok || r.Expired(now) {
		return nil
	}
	cp := *r
	cp.Fingerprint = bytes.Clone(r.Fingerprint)
	cp.Response = bytes.Clone(r.Response)
	return &cp
}

// put caches a finished record for the shorter of its remaining life and
// the cache's TTL. The record must not be changed afterwards.
func (c *recordCache) put(r *Record, now time.Time) {
	if !r.Finished() {
		return
	}
	ttl := min(r.ExpiresAt.Sub(now), c.ttl)
	if ttl <= 0 {
		return
	}
	cp := *r
	cp.Fingerprint = bytes.Clone(r.Fingerprint)
	cp.Response = bytes.Clone(r.Response)
	c.c.SetWithTTL(r.Key, &cp, int64(len(r.Key)+len(cp.Fingerprint)+len(cp.Response)+160), ttl)
}

func (c *recordCache) del(key string) { c.c.Del(key) }

func (c *recordCache) close() { c.c.Close() }
