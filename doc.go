// Package idem is an idempotency record store: it lets a service run a
// request with side effects (charge a card, create an order) at most once
// per idempotency key, and hand every retry the stored response.
//
// # Basics
//
// Open a store on a data directory (Badger, embedded) and wrap the side
// effect in Do:
//
//	s, err := idem.Open("/var/lib/myservice/idem", nil)
//	...
//	resp, replayed, err := s.Do(ctx, key, fingerprint, func(ctx context.Context) ([]byte, error) {
//		return chargeCard(ctx, amount)
//	})
//
// The first call with a key runs the function and stores its response;
// every later call with the same key and fingerprint gets that response
// back with replayed == true. A call with the same key and another
// fingerprint gets ErrFingerprintMismatch: the key was reused for a
// different request. While the first call runs, others get ErrInProgress.
//
// Begin and the Lease methods are the steps Do is made of, for callers that
// run the request themselves, such as HTTP middleware (package idemhttp).
//
// # States
//
// A record is in progress (a lease holder runs the request), completed (its
// response is replayed), or failed (replayed too, unless marked retryable).
// Begin applies this table:
//
//	stored record              same fingerprint          other fingerprint
//	none, or expired           new lease                 new lease
//	in progress, lease live    ErrInProgress             ErrFingerprintMismatch
//	in progress, lease lapsed  takeover: new lease       ErrFingerprintMismatch
//	completed                  replay                    ErrFingerprintMismatch
//	failed, not retryable      replay                    ErrFingerprintMismatch
//	failed, retryable          new lease                 ErrFingerprintMismatch
//
// Every transition is one atomic compare-and-swap of one key: of any number
// of concurrent Begins on a new key, exactly one gets the lease, and the
// others are answered from its record.
//
// # Leases and fencing
//
// A lease lasts Options.LeaseTTL and is renewed by Lease.KeepAlive while
// its request runs (Do, idemhttp and idemgrpc all use it), also after the
// caller has gone. If the holder crashes, its lease lapses and the next
// Begin takes the key over with a larger fencing token; on the embedded
// store, the next process to open the directory takes over the keys of a
// holder that died with the previous one at once. Complete, Fail, Release
// and Extend apply only while the stored record still carries the lease's
// token: a stale holder that wakes up late gets ErrLeaseLost and cannot
// overwrite the newer outcome, and Do then returns the newer, stored
// outcome, never its own.
//
// A duplicate that arrives while the first request runs may Wait for its
// outcome instead of taking ErrInProgress. The request's context carries
// its key (KeyFrom), and SubKey derives a stable key for each call it makes
// to another idempotent service, so a request run again after a crash
// sends the same keys downstream.
//
// # Time
//
// Every expiry decision is made by Options.Now, so tests move a clock
// instead of sleeping. Completed records live Options.CompletedTTL (24h),
// failed ones Options.FailedTTL (24h); WithTTL sets another lifetime per
// call (7 days for payments). An in-progress record keeps its fingerprint
// for at least the completed lifetime, so a key reused after a crash is
// still caught. Underneath, Badger drops each entry by the real clock,
// rounded up to whole seconds, never before its logical expiry.
//
// # Durability
//
// By default (SyncAlways) Complete and Fail return only after the record is
// fsynced; concurrent completions are committed in one transaction and
// share one fsync (group commit). Begin does not wait
// for a sync: if the process dies, its lease lapses and a retry takes over.
// SyncPeriodic and SyncNever trade a bounded loss window for speed; see Sync.
// (Badger's own Sync covers only the active memtable's log; when the
// memtable a durable write landed in was rotated out before the group's
// sync, the store fsyncs that memtable's log too.)
//
// Every record carries a checksum: a record altered on disk is ErrCorrupt
// for its key, never replayed. The embedded store refuses writes with
// ErrNoSpace before the disk is too full for Badger's mapped writes, stops
// with ErrStoreFailed after a write error Badger may not survive, and
// refuses a damaged data directory at Open with ErrCorrupt naming the file,
// changing nothing in it (README, "When the disk fails").
//
// # Operating
//
// Package idemprom exports a store's counters, census and latencies to
// Prometheus. Package idemadmin serves a running store's records, a
// filtered list and a census over HTTP, and, when enabled, its fenced
// repairs (the Force methods of Store); its Client, which the idem
// command's -admin flag uses, calls them. A repair refused because the
// record changed since the operator looked returns a *ChangedError.
//
// # Caveats
//
// One process may open a data directory read-write at a time; several
// service instances share a store through Redis (package redisstore) or
// Postgres (package pgstore, which also completes a record in the
// caller's own transaction).
package idem
