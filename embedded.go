package idem

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemdb/idem/internal/badgerkv"
	"github.com/idemdb/idem/internal/storeinternal"
)

// Open opens (creating if needed) the embedded store in dir and returns a
// Store over it. Passing nil options uses the defaults. With
// Options.InMemory, dir must be "". Only one process may open a directory
// read-write; a second gets an error wrapping ErrLocked.
func Open(dir string, opts *Options) (*Store, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.InMemory && dir != "" {
		return nil, fmt.Errorf("idem: open: Options.InMemory needs an empty dir, got %q", dir)
	}
	if !o.InMemory && dir == "" {
		return nil, errors.New("idem: open: no data directory given (use Options.InMemory for a store in memory)")
	}
	kv, err := badgerkv.Open(badgerkv.Config{
		Dir:          dir,
		InMemory:     o.InMemory,
		ReadOnly:     o.ReadOnly,
		Sync:         engineSync(o.Sync),
		SyncInterval: o.SyncInterval,
		Reserve:      o.DiskReserve,
		Logger:       o.Logger,

		DiscardDamagedLog: o.DiscardDamagedLog,
	})
	if err != nil {
		return nil, fmt.Errorf("idem: %w", embeddedErr(err))
	}
	if o.CacheSize == 0 {
		o.CacheSize, o.defaultCache = DefaultCacheSize, true
	}
	return newStore(embedded{kv}, o), nil
}

// engineSync returns the engine's name for the sync mode s.
func engineSync(s Sync) badgerkv.Sync {
	switch s {
	case SyncPeriodic:
		return badgerkv.SyncPeriodic
	case SyncNever:
		return badgerkv.SyncNever
	}
	return badgerkv.SyncAlways
}

// embedded is the Backend over the embedded engine. It adds nothing but
// the store's own errors for the engine's.
type embedded struct{ kv *badgerkv.DB }

func (e embedded) Load(ctx context.Context, key string) ([]byte, error) {
	v, err := e.kv.Load(ctx, key)
	return v, embeddedErr(err)
}

func (e embedded) CompareAndSwap(ctx context.Context, key string, old, new []byte, expireAt time.Time, durable bool) ([]byte, bool, error) {
	cur, ok, err := e.kv.CompareAndSwap(ctx, key, old, new, expireAt, durable)
	return cur, ok, embeddedErr(err)
}

func (e embedded) Delete(ctx context.Context, key string) error {
	return embeddedErr(e.kv.Delete(ctx, key))
}

func (e embedded) Scan(ctx context.Context, prefix string, fn func(key string, value []byte) error) error {
	return embeddedErr(e.kv.Scan(ctx, prefix, fn))
}

func (e embedded) Close() error { return embeddedErr(e.kv.Close()) }

func (e embedded) CollectGarbage(ctx context.Context, present int) (before, after int64, err error) {
	before, after, err = e.kv.CollectGarbage(ctx, present)
	return before, after, embeddedErr(err)
}

func (e embedded) DiskUsage() int64 { return e.kv.DiskUsage() }

// Epoch numbers this open of the data directory; see holderGone.
func (e embedded) Epoch() uint64 { return e.kv.Epoch() }

// DiskFree returns the bytes free on the file system of the embedded
// store's data directory, or -1 when the store is in memory or on another
// backend, or the system does not say. Writes return ErrNoSpace while it
// is below Options.DiskReserve.
func (s *Store) DiskFree() int64 {
	if e, ok := s.b.(embedded); ok {
		return e.kv.DiskFree()
	}
	return -1
}

// embeddedErr gives the engine's errors the store's names, keeping the
// engine's message and cause.
func embeddedErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, badgerkv.ErrLocked):
		return &namedErr{name: ErrLocked, err: err}
	case errors.Is(err, badgerkv.ErrFailed) && errors.Is(err, badgerkv.ErrNoSpace):
		return &namedErr{name: errors.Join(ErrStoreFailed, ErrNoSpace), err: err}
	case errors.Is(err, badgerkv.ErrFailed):
		return &namedErr{name: ErrStoreFailed, err: err}
	case errors.Is(err, badgerkv.ErrNoSpace):
		return &namedErr{name: ErrNoSpace, err: err}
	case errors.Is(err, badgerkv.ErrCorrupt):
		return &namedErr{name: ErrCorrupt, err: err}
	case errors.Is(err, badgerkv.ErrNeedsRecovery):
		return &namedErr{name: ErrNeedsRecovery, err: err}
	}
	return err
}

// namedErr is err, known also as the store's sentinel name.
type namedErr struct {
	name error
	err  error
}

func (e *namedErr) Error() string { return e.err.Error() }
func (e *namedErr) Unwrap() []error {
	return []error{e.name, e.err}
}

func init() {
	storeinternal.Backend = func(s any) any { return s.(*Store).b }
	storeinternal.Engine = func(s any) any {
		if e, ok := s.(*Store).b.(embedded); ok {
			return e.kv
		}
		return nil
	}
}
