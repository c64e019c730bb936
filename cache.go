package idem

import (
	"bytes"
	"sync"
	"sync/atomic"
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
	// gen counts deletions. A reader takes it before reading the backend
	// and puts what it read only if no deletion happened meanwhile, so a
	// record deleted during the read is not cached after its deletion.
	gen atomic.Uint64
	// mu makes put's check of gen and its set one step, ordered against
	// del's increment and deletion: checked alone, a put could pass the
	// check, then a deletion run to its end, then the set land after it.
	mu sync.Mutex
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
	// One allocation holds the record and another both byte fields: a hit
	// costs well under a microsecond, so each allocation shows.
	cp := *r
	buf := make([]byte, len(r.Fingerprint)+len(r.Response))
	if r.Fingerprint != nil {
		cp.Fingerprint = buf[:copy(buf, r.Fingerprint):len(r.Fingerprint)]
	}
	if r.Response != nil {
		n := len(r.Fingerprint)
		cp.Response = buf[n : n+copy(buf[n:], r.Response) : len(buf)]
	}
	return &cp
}

// epoch returns the deletion count to pass to put after a backend read.
func (c *recordCache) epoch() uint64 { return c.gen.Load() }

// put caches a finished record, read from the backend when the deletion
// count was epoch, for the shorter of its remaining life and the cache's
// TTL. The record must not be changed afterwards.
func (c *recordCache) put(r *Record, now time.Time, epoch uint64) {
	if !r.Finished() || c.gen.Load() != epoch {
		return
	}
	ttl := min(r.ExpiresAt.Sub(now), c.ttl)
	if ttl <= 0 {
		return
	}
	cp := *r
	cp.Fingerprint = bytes.Clone(r.Fingerprint)
	cp.Response = bytes.Clone(r.Response)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen.Load() == epoch {
		c.c.SetWithTTL(r.Key, &cp, int64(len(r.Key)+len(cp.Fingerprint)+len(cp.Response)+160), ttl)
	}
}

// del drops key from the cache. Ristretto applies sets asynchronously, so
// a set still buffered could otherwise land after the deletion; Wait
// applies everything buffered before del returns.
func (c *recordCache) del(key string) {
	c.mu.Lock()
	c.gen.Add(1)
	c.c.Del(key)
	c.mu.Unlock()
	c.c.Wait()
}

func (c *recordCache) close() { c.c.Close() }
