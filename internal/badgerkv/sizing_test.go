package badgerkv

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Badger v4 builds a table in a buffer that starts at twice the table
// size and doubles when it fills, and keeps up to eight such buffers for
// the tables after it, whatever their size. A memtable flush writes the
// whole memtable into one table, so the memtable is sized for that table
// to fit the first buffer (2 MiB): then no buffer grows. The builder
// takes BlockSize+256 bytes of buffer for each block of at most BlockSize.
func TestFlushedTableFitsBuilderBuffer(t *testing.T) {
	b := openTemp(t)
	db := b.Badger()
	// Records of the store's shape: a 22-byte key, a 200-byte value.
	wb := db.NewWriteBatch()
	for i := range 40_000 {
		e := badger.NewEntry(dbKey(fmt.Sprintf("req-%016x", rand.Uint64())), randomBytes(200))
		e.ExpiresAt = uint64(time.Now().Add(time.Hour).Unix())
		require.NoError(t, wb.SetEntry(e), i)
	}
	require.NoError(t, wb.Flush())

	opts := db.Opts()
	buffer := 2 * opts.BaseTableSize
	var l0 []badger.TableInfo
	require.Eventually(t, func() bool {
		l0 = l0[:0]
		for _, ti := range db.Tables() {
			if ti.Level == 0 {
				l0 = append(l0, ti)
			}
		}
		return len(l0) >= 3
	}, 10*time.Second, 10*time.Millisecond, "memtables flushed to L0")
	for _, ti := range l0 {
		need := int64(ti.OnDiskSize) * int64(opts.BlockSize+256) / int64(opts.BlockSize)
		assert.LessOrEqual(t, need, buffer, "table %d: %d bytes on disk", ti.ID, ti.OnDiskSize)
		t.Logf("L0 table %d: %d bytes, %d keys; builder buffer needed about %d of %d", ti.ID, ti.OnDiskSize, ti.KeyCount, need, buffer)
	}
}

// A transaction may hold at most 15% of MemTableSize: a value kept in the
// LSM tree (under the value threshold) and a full group-commit batch must
// both fit. In memory, where there is no value log, the threshold is the
// largest value Badger takes and stays 1 MiB.
func TestTransactionLimitsFitMemtable(t *testing.T) {
	for _, cfg := range []Config{{Dir: t.TempDir()}, {InMemory: true}} {
		opts := badgerOptions(&cfg)
		limit := 15 * opts.MemTableSize / 100
		if cfg.InMemory {
			assert.Equal(t, int64(1<<20), opts.ValueThreshold)
		} else {
			assert.Equal(t, int64(memTableSize), opts.MemTableSize)
		}
		assert.Less(t, opts.ValueThreshold, limit, "in memory: %v", cfg.InMemory)
		// A batch's writes each add a key (at most MaxKeySize+1 bytes in
		// the store) and Badger's per-entry overhead to the values.
		assert.Less(t, int64(batchMaxBytes+batchMaxWrites*(256+1+32)), limit, "in memory: %v", cfg.InMemory)
	}
}
