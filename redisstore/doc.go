// Package redisstore runs the idem store on Redis, so that several
// instances of a service share one set of idempotency records.
//
// # Basics
//
// Open takes any go-redis client (standalone, Sentinel failover, Cluster)
// and returns the same *idem.Store the embedded store is: the state
// machine, the record encoding, fencing and TTLs are idem's, and only the
// storage differs. Moving a service from embedded to shared is one line:
//
//	rdb := redis.NewUniversalClient(&redis.UniversalOptions{
//		Addrs:                 []string{"redis:6379"},
//		ContextTimeoutEnabled: true, // let ctx deadlines bound Redis calls
//	})
//	s, err := redisstore.Open(rdb, nil) // was: idem.Open(dir, nil)
//
// For another key prefix or WAIT, build the backend yourself:
//
//	b := redisstore.NewBackend(rdb, &redisstore.Config{Prefix: "payments:", WaitReplicas: 1})
//	s, err := idem.New(b, opts)
//
// Closing the store does not close the client: the caller owns it, may
// share it with the rest of the service, and closes it after the store.
//
// # How records are kept
//
// Each record is one Redis string, Config.Prefix + key, holding the same
// versioned bytes the Badger store keeps. A claim of a new key is one SET
// NX GET, which writes only if the key is absent and otherwise returns what
// is stored. Every other transition (takeover, complete, fail, release,
// extend) is one Lua script that compares the stored bytes with those the
// instance read or last wrote and writes only if they match: Redis runs
// commands and scripts one at a time, so of any number of instances racing
// on a key exactly one wins, and the fencing check (same token, still in
// progress) holds across instances. The script is sent with EVALSHA and
// re-sent with EVAL when Redis has lost its script cache (restart,
// failover, SCRIPT FLUSH). There are no WATCH/MULTI loops. Store.Delete is
// one DEL.
//
// The replies of the claim and of the script are read as raw RESP, so
// that a claim made (a nil reply) is not handled as go-redis's redis.Nil
// error; an error reply sends the command again through go-redis's usual
// path, which follows MOVED, retries and reports it. A hook on the client
// sees such a command twice, the first time as a redis.RawCmd.
//
// The Redis key expires no earlier than the record: its expiry is set with
// every write (SET ... PX) to the record's remaining life, rounded up to
// whole seconds plus a margin. Released records are deleted at once.
//
// # Waiting for another instance
//
// Store.Wait (and idemhttp's Options.WaitFor) on one instance wakes as
// soon as another instance completes, fails or releases the key: the
// Backend is an idem.Watcher, subscribed on one pub/sub connection to the
// Redis keyspace notifications of the keys being waited for. On first use
// it turns on the notifications it needs (notify-keyspace-events K$gx, or
// KA) with CONFIG SET; where CONFIG is refused, as on many managed
// services, set that in the server's configuration, or Wait falls back to
// reading the record every idem.Options.WaitPoll. It polls that way on a
// Cluster or a Ring too (keyspace notifications are node-local), after a
// Sentinel failover to a master not configured for them, and always for a
// holder that died, since a lapsed lease writes nothing.
//
// # Time
//
// The store's clock (idem.Options.Now, on each instance) decides whether a
// lease has lapsed and whether a record has expired; Redis's clock decides
// only when Redis drops a key, and that is set from the remaining life as a
// duration, so an offset between an instance's clock and the Redis
// server's cannot drop a record early.
//
// Skew between instances matters for takeover: an instance whose clock
// runs ahead by d sees other instances' leases lapse d early. Do renews its
// lease every third of Options.LeaseTTL, so a live holder is taken over
// only when d exceeds about two thirds of LeaseTTL (20s of the default
// 30s); with NTP, skew is milliseconds. Should a takeover happen while the
// old holder still runs, fencing still holds: the old holder's Complete,
// Fail, Extend and Release get idem.ErrLeaseLost and cannot overwrite the
// newer outcome. Keep LeaseTTL well above the worst skew you expect.
//
// # Read cache
//
// idem.Options.CacheSize puts a local cache of finished records (completed,
// or failed and not retryable) in front of Redis. They do not change until
// they expire, so Get and the replay path of Begin skip a round trip. The
// cache never holds in-progress records and never decides a claim; entries
// live no longer than the record and idem.Options.CacheTTL (1m). A Delete
// made by another instance is seen by this instance's cache only when the
// entry leaves it, after at most CacheTTL.
//
// # Failures
//
// When Redis is down or slow, every call returns an error that says
// "redis" with the operation and key, and errors.Is reaches the cause (a
// refused connection, os.ErrDeadlineExceeded, context.DeadlineExceeded). No
// lease is ever granted without Redis's reply. A claim whose reply was lost
// (a timeout after Redis ran the script) leaves an in-progress record that
// nobody holds: retries get idem.ErrInProgress until its lease lapses, and
// then take it over. go-redis also resends a command whose reply timed out
// (Options.MaxRetries, 3 by default); when Redis had run the first copy,
// the resent script finds that write in place, so Begin answers
// idem.ErrInProgress for its own claim, and Complete, Fail and Release
// answer idem.ErrLeaseLost although their write was made (a retry of the
// request replays the outcome). MaxRetries: -1 turns resending off, and
// such calls return the timeout instead. Set ContextTimeoutEnabled on the
// client so that ctx deadlines bound each call; without it go-redis bounds
// each call by its own ReadTimeout and WriteTimeout (3s by default)
// instead. After Redis comes back, go-redis may answer with its last dial
// error for up to about a second, until its pool's background probe
// reconnects.
//
// # Durability and failover
//
// Complete returns once the Redis master has the record. How long that
// survives is Redis's persistence setting (appendfsync always, everysec,
// or none), not idem.Options.Sync, which concerns Badger only.
//
// Replication is asynchronous: if the master fails after acknowledging a
// Complete and before a replica has it, the promoted replica does not have
// the record; a retry then finds the in-progress claim (lease lapses, then
// takeover) or nothing, and runs the request again. Config.WaitReplicas
// narrows that window: Complete and Fail wait, with WAIT, until that many
// replicas acknowledge the write, and return an error wrapping
// ErrNotReplicated when they do not within Config.WaitTimeout (the record
// is still written on the master). WAIT is not a consensus protocol: a
// failover can still choose a replica that missed the write, so this
// lowers the risk rather than removing it. Claims are not waited for: a
// claim the promoted replica missed lets a retry run the request while
// the first holder still runs it, and only the first outcome written is
// kept (the other holder gets idem.ErrLeaseLost). Redis 7.2's WAITAOF (waiting for
// the AOF fsync) is not used, as it needs Redis 7.2.
//
// # Cluster
//
// On Redis Cluster every record is one key, so every script touches one
// slot and no script is cross-slot; keys spread over the slots by the
// whole key (prefix and all). A prefix holding a hash tag ("{...}") would
// put every record in one slot. Scan visits every master in turn (a Ring:
// every shard). WAIT runs on the master that owns the key; when the
// client's slot map names a node that answers MOVED, the map is reloaded
// and the write sent to the new owner.
//
// A ClusterClient follows a failover when a node answers MOVED or when it
// reloads its slot map (ClusterOptions.ClusterStateReloadInterval, a
// minute by default in go-redis 9.22 and later), but not when the master
// it knows refuses connections (redis/go-redis#3979): after a master is
// killed, calls for its slots fail until the next reload. Set the interval
// to a few seconds.
//
// A go-redis Ring is not a safe home for records that must not run twice:
// when its health check finds a shard down, the Ring hashes that shard's
// keys to the other shards, where they are absent, so a retry of a
// completed request gets a new lease and runs again (and again when the
// shard returns). Scan skips a shard that is down. Use a Ring only where
// losing records with a shard is acceptable; Cluster and Sentinel fail
// over to a replica instead.
package redisstore
