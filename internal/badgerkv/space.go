package badgerkv

import (
	"fmt"
	"sync/atomic"
	"time"
)

// DefaultReserve is the free space, in bytes, that writes leave on the
// data directory's file system by default. Badger writes its logs through
// memory mappings of preallocated sparse files, and a page it dirties
// that the file system cannot back kills the process with SIGBUS: there
// is no error to return. So writes stop while less than this is free,
// sized from the files Badger maps and may fill before any of them is
// freed (see badgerOptions):
//
//	memtable logs  5 × 1.75 MiB  the active memtable's, three queued to flush (NumMemtables) and one flushing
//	flushed table     1.75 MiB  the table a flush writes before its log is deleted
//	value log           64 MiB  the active value-log file grows to ValueLogFileSize
//	compaction          32 MiB  new tables written before the old ones are deleted (an L0
//	                            compaction: up to 15 tables of 1.75 MiB, and the 4 MiB base level)
//	                   -------
//	                   107 MiB
//
// The reserve is 144 MiB, the sum when memtables were 12 MiB: the rest is
// margin. The check runs before every write, on a figure at most
// spaceCacheFor old. It cannot stop another process from filling the disk
// between the check and Badger's background flush: the reserve must also
// cover what other writers on the same file system may write in that
// moment.
const DefaultReserve = 144 << 20

// spaceCacheFor is how long a free-space figure is used before statfs is
// asked again: a few milliseconds of writes fit many times in the
// reserve's margin.
const spaceCacheFor = 5 * time.Millisecond

// spaceGuard refuses writes while the free space of dir's file system is
// below reserve. It is safe for simultaneous use.
type spaceGuard struct {
	dir     string
	reserve int64
	start   time.Time
	statfs  func(dir string) (int64, error) // free bytes; a test may replace it

	at   atomic.Int64 // when free was read, in nanoseconds since start (+1; 0: never)
	free atomic.Int64 // free bytes, as of at
}

func newSpaceGuard(dir string, reserve int64) *spaceGuard {
	return &spaceGuard{dir: dir, reserve: reserve, start: time.Now(), statfs: freeSpace}
}

// check returns an error wrapping ErrNoSpace when less than the reserve
// is free.
func (g *spaceGuard) check() error {
	if g == nil {
		return nil
	}
	free, err := g.freeBytes()
	if err != nil {
		return fmt.Errorf("free space of %s: %w", g.dir, err)
	}
	if free < g.reserve {
		return fmt.Errorf("%w: %d MiB free on the file system of %s, below the %d MiB reserve", ErrNoSpace, free>>20, g.dir, g.reserve>>20)
	}
	return nil
}

// freeBytes returns the free bytes, asking statfs at most once every
// spaceCacheFor.
func (g *spaceGuard) freeBytes() (int64, error) {
	now := int64(time.Since(g.start)) + 1
	if at := g.at.Load(); at != 0 && now-at < int64(spaceCacheFor) {
		return g.free.Load(), nil
	}
	free, err := g.statfs(g.dir)
	if err != nil {
		return 0, err
	}
	g.free.Store(free)
	g.at.Store(now)
	return free, nil
}

// DiskFree returns the bytes free for unprivileged writers on the data
// directory's file system, or -1 for a store in memory or when the
// system does not say.
func (b *DB) DiskFree() int64 {
	if b.dir == "" {
		return -1
	}
	free, err := freeSpace(b.dir)
	if err != nil {
		return -1
	}
	return free
}
