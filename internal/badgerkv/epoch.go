package badgerkv

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// epochKey holds the number of read-write opens of the directory, outside
// the namespace of the stored keys.
var epochKey = []byte("m/epoch")

// Epoch returns the number of this open of the directory: every
// read-write Open makes it one larger than the last, durably, before it
// returns. Badger's directory lock allows one read-write process at a
// time, so a value written under an earlier epoch was written by a process
// that has ended. An in-memory DB has epoch 1; a read-only one, the epoch
// of the last read-write open.
func (b *DB) Epoch() uint64 { return b.epoch }

// bumpEpoch reads the directory's epoch and, unless the DB is read-only,
// stores the next one durably and returns it.
func (b *DB) bumpEpoch(readOnly bool) (uint64, error) {
	var epoch uint64
	err := b.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(epochKey)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("%w: the epoch entry is %d bytes, not 8", ErrCorrupt, len(v))
			}
			epoch = binary.BigEndian.Uint64(v)
			return nil
		})
	})
	if err != nil || readOnly {
		return epoch, err
	}
	epoch++
	err = b.db.Update(func(txn *badger.Txn) error {
		return txn.Set(epochKey, binary.BigEndian.AppendUint64(nil, epoch))
	})
	if err == nil {
		err = b.db.Sync()
	}
	return epoch, err
}
