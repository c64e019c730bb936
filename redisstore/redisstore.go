package redisstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/idemdb/idem"
)

// DefaultPrefix is the key prefix Open uses and a zero Config.Prefix means.
const DefaultPrefix = "idem:"

// DefaultWaitTimeout is how long a durable write waits for replicas when
// Config.WaitReplicas is set and Config.WaitTimeout is zero.
const DefaultWaitTimeout = time.Second

// ErrNotReplicated is returned by a durable write (Lease.Complete and
// Lease.Fail) when Config.WaitReplicas is set and fewer replicas than that
// acknowledged the write within Config.WaitTimeout, or WAIT itself failed
// (its cause is wrapped too). The write itself was made on the master and
// is what every later read sees; only the promise that it survives a
// failover is missing.
var ErrNotReplicated = errors.New("write not acknowledged by enough replicas")

// Config configures a Backend. A nil *Config, and every zero field, means
// the default named in the field's comment.
type Config struct {
	// Prefix is put before every idempotency key to make the Redis key, so
	// that one Redis can hold several stores and other data. Zero means
	// DefaultPrefix ("idem:"). On Redis Cluster a prefix such as
	// "idem:{tenant}:" would put every record in one slot, and so on one
	// node; leave braces out unless that is wanted. Prefixes of stores
	// sharing one Redis must not nest: a store under "idem:" sees the keys
	// of a store under "idem:x:" as its own records "x:...", so its scans,
	// counts and purges would reach them.
	Prefix string

	// WaitReplicas makes every durable write (Complete and Fail) wait, with
	// the Redis WAIT command, until that many replicas acknowledge it, and
	// fail with ErrNotReplicated when they do not within WaitTimeout. Zero
	// means no waiting: Complete returns once the master has the record.
	// Claims (Begin) and Extend never wait. A claim lost on a failover
	// frees the key at once: a retry gets a new lease and runs the
	// request while the first holder may still run it (the holder's
	// Complete then gets idem.ErrLeaseLost). A lost Extend frees the key
	// when the lease it extended lapses.
	WaitReplicas int

	// WaitTimeout bounds the wait for replicas. Zero means
	// DefaultWaitTimeout (1s); less than a millisecond, WAIT's unit, means
	// one millisecond.
	WaitTimeout time.Duration

	// SetKeyspaceEvents lets Watch (Store.Wait across instances) turn on
	// the keyspace notifications it needs with CONFIG SET when the server
	// does not publish them. They are a server-wide setting: Redis then
	// publishes an event for every write of every key, for every client.
	// False means Watch uses them only when the server's configuration
	// already enables them (notify-keyspace-events with K and $gx, or K
	// and A), and Wait otherwise reads the record every
	// idem.Options.WaitPoll.
	SetKeyspaceEvents bool
}

// Backend is the idem.Backend on Redis. Each record is one Redis string
// key (Config.Prefix + the idempotency key) holding the record's encoded
// bytes, with a Redis expiry no earlier than the record's own. It is safe
// for simultaneous use by multiple goroutines; most callers want Open.
type Backend struct {
	rdb    redis.UniversalClient
	prefix string
	wait   int
	waitTO time.Duration
	// noSetNXGet is set once Redis refused SET NX GET (before 7.0): new
	// keys are then claimed by the script too.
	noSetNXGet atomic.Bool
	setEvents  bool  // Config.SetKeyspaceEvents
	watch      watch // keyspace notifications for Watch
}

var _ idem.Backend = (*Backend)(nil)

// Open returns an idem.Store on rdb with the default Config (prefix
// "idem:", no WAIT). Passing nil options uses idem's defaults. rdb may be a
// *redis.Client (standalone or Sentinel failover), a *redis.ClusterClient
// or a *redis.Ring (see the package doc for what a Ring loses when a
// shard is down). Closing the store does not close rdb: the caller owns
// it and closes it after the store.
func Open(rdb redis.UniversalClient, opts *idem.Options) (*idem.Store, error) {
	if rdb == nil {
		return nil, errors.New("redisstore: open: nil redis client")
	}
	return idem.New(NewBackend(rdb, nil), opts)
}

// NewBackend returns the Redis backend on rdb configured by cfg (nil means
// the defaults); pass it to idem.New. It does not contact Redis.
func NewBackend(rdb redis.UniversalClient, cfg *Config) *Backend {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.WaitTimeout <= 0 {
		c.WaitTimeout = DefaultWaitTimeout
	}
	// WAIT counts in whole milliseconds, and WAIT n 0 waits for ever.
	c.WaitTimeout = max(c.WaitTimeout, time.Millisecond)
	return &Backend{rdb: rdb, prefix: c.Prefix, wait: max(c.WaitReplicas, 0), waitTO: c.WaitTimeout, setEvents: c.SetKeyspaceEvents}
}

// Check implements idem.Checker: the prefix must be valid UTF-8, since
// Redis's SCAN patterns and the idem command handle keys as text, and a
// store under another prefix would be found empty.
func (b *Backend) Check() error {
	if !utf8.ValidString(b.prefix) {
		return fmt.Errorf("redisstore: the key prefix %q is not valid UTF-8", b.prefix)
	}
	return nil
}

// Prefix returns the key prefix in use.
func (b *Backend) Prefix() string { return b.prefix }

// Client returns the Redis client under b.
func (b *Backend) Client() redis.UniversalClient { return b.rdb }

// casScript is every transition of a record but a claim by SET NX GET:
// compare the stored bytes with the caller's old value, and only if they
// match write the new value (or delete). KEYS[1] is the record's key; the
// number of ARGV says which transition it is:
//
//	3: old, new, expiry  write new where old is stored (complete, extend...)
//	2: new, expiry       write new where nothing is stored (a claim)
//	1: old               delete where old is stored (release)
//	0:                   nothing, where nothing is stored
//
// The expiry is the Redis expiry in milliseconds from now. The script
// returns integer 1 when it swapped, integer 0 when it did not and the
// key is absent, and the stored value when it did not swap. Telling the
// transitions apart by their number of arguments rather than by flags
// leaves out two arguments that Redis would read, and make Lua strings
// of, on every call (about 5% of the script's time on Redis 7.0).
var casScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
local n = #ARGV
if n == 2 then
	if cur then return cur end
	redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
	return 1
end
if n == 0 then
	if cur then return cur end
	return 1
end
if cur ~= ARGV[1] then return cur or 0 end
if n == 3 then
	redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
	redis.call('DEL', KEYS[1])
end
return 1
`)

// fail wraps an error from Redis so that it says where it came from; the
// cause stays reachable with errors.Is (a refused connection, a timeout,
// context.DeadlineExceeded).
func fail(op string, err error) error {
	return fmt.Errorf("redis %s: %w", op, err)
}

// Load implements idem.Backend with one GET.
func (b *Backend) Load(ctx context.Context, key string) ([]byte, error) {
	v, err := b.rdb.Get(ctx, b.prefix+key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fail("get", err)
	}
	return v, nil
}

// CompareAndSwap implements idem.Backend with one Lua script, so the
// comparison and the write are one atomic step on the Redis that owns the
// key: of several instances racing on a key, exactly one swaps. The script
// runs with EVALSHA and falls back to EVAL when Redis does not have it
// cached (after a restart, a failover or SCRIPT FLUSH).
//
// The Redis expiry is expireAt carried over to a duration from now by this
// instance's real clock (SET ... PX), so that an offset between this
// machine's clock and the Redis server's cannot drop a record early.
//
// With Config.WaitReplicas, a durable swap is followed by WAIT on the same
// connection; too few acknowledgements give an error wrapping
// ErrNotReplicated after the swap was made.
func (b *Backend) CompareAndSwap(ctx context.Context, key string, old, new []byte, expireAt time.Time, durable bool) ([]byte, bool, error) {
	k := b.prefix + key
	ms := pxMillis(new, expireAt)
	if old == nil && new != nil && !(durable && b.wait > 0) && !b.noSetNXGet.Load() {
		cur, swapped, err := b.claim(ctx, k, new, ms)
		if err == nil || !isSyntaxErr(err) {
			return cur, swapped, err
		}
		b.noSetNXGet.Store(true) // Redis before 7.0: the script does it
	}
	args := casArgs(k, old, new, ms)
	if durable && b.wait > 0 && new != nil {
		res, err := b.casAndWait(ctx, k, args)
		if err != nil && !errors.Is(err, ErrNotReplicated) {
			return nil, false, fail("compare-and-swap", err)
		}
		cur, swapped, perr := casResult(res, nil)
		if perr != nil {
			return nil, false, fail("compare-and-swap", perr)
		}
		return cur, swapped, err
	}
	cur, swapped, err := b.cas(ctx, args)
	if err != nil {
		return nil, false, fail("compare-and-swap", err)
	}
	return cur, swapped, nil
}

// cas runs the script with EVALSHA and reads its reply raw: a
// go-redis Cmd would turn it into an interface, and a stored value into a
// string and then bytes. A reply that is an error (the script is not
// cached, MOVED, READONLY...) says the script did not run: the script
// goes again through go-redis's own path, which follows redirects and
// retries as for any command: with EVAL when Redis does not have it,
// otherwise with Script.Run (EVALSHA, then EVAL).
func (b *Backend) cas(ctx context.Context, args []any) ([]byte, bool, error) {
	cmd := redis.NewRawCmd(ctx, args...)
	cmd.SetFirstKeyPos(3) // the key, for a Cluster's or a Ring's routing
	_ = b.rdb.Process(ctx, cmd)
	raw, err := cmd.Result()
	if err != nil {
		return nil, false, err
	}
	switch v, kind := parseReply(raw); kind {
	case replyInt:
		return nil, len(v) == 1 && v[0] == '1', nil
	case replyString:
		return v, false, nil
	}
	if bytes.HasPrefix(raw, []byte("-NOSCRIPT")) {
		return casResult(casScript.Eval(ctx, b.rdb, casKeys(args), args[4:]...).Result())
	}
	return casResult(casRun(ctx, b.rdb, args))
}

// casRun runs the script through go-redis's Script.Run with args, a
// command built by casArgs.
func casRun(ctx context.Context, c redis.Scripter, args []any) (any, error) {
	return casScript.Run(ctx, c, casKeys(args), args[4:]...).Result()
}

// casKeys returns the KEYS of a command built by casArgs.
func casKeys(args []any) []string { return []string{args[3].(string)} }

// claim writes new under k when no value is stored there, in one plain
// command: SET NX GET (Redis 7.0 and later) writes only if k is absent and
// returns the stored value otherwise, atomically, as the script would,
// without the script's cost on the server.
//
// The reply is read raw: through a go-redis Cmd, the nil reply of a claim
// made would come back as the error redis.Nil, which go-redis checks for
// retry like any failure, at a cost on every new key. An error reply (the
// command was refused and did nothing) sends the command again through
// go-redis's own path, which handles it.
func (b *Backend) claim(ctx context.Context, k string, new []byte, ms int64) ([]byte, bool, error) {
	cmd := redis.NewRawCmd(ctx, "SET", k, new, "NX", "GET", "PX", ms)
	_ = b.rdb.Process(ctx, cmd)
	raw, err := cmd.Result()
	if err != nil {
		return nil, false, fail("set nx", err)
	}
	switch v, kind := parseReply(raw); kind {
	case replyNil:
		return nil, true, nil
	case replyString:
		return v, false, nil
	}
	return b.claimCmd(ctx, k, new, ms)
}

// claimCmd is claim through a go-redis Cmd.
func (b *Backend) claimCmd(ctx context.Context, k string, new []byte, ms int64) ([]byte, bool, error) {
	v, err := b.rdb.Do(ctx, "SET", k, new, "NX", "GET", "PX", ms).Text()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, true, nil
	case err != nil:
		return nil, false, fail("set nx", err)
	}
	return []byte(v), false, nil
}

// Kinds of reply parseReply tells apart.
const (
	replyOther  = iota // an error, or anything unexpected
	replyNil           // RESP2's $-1, RESP3's _
	replyString        // a bulk string
	replyInt           // an integer
)

// parseReply reads one raw RESP2 or RESP3 reply of the kinds SET NX GET
// and the script return: a bulk string (its bytes, which alias raw), an
// integer (its digits), or nil. Anything else is replyOther.
func parseReply(raw []byte) ([]byte, int) {
	end := bytes.IndexByte(raw, '\r')
	if end < 1 || len(raw) < end+2 || raw[end+1] != '\n' {
		return nil, replyOther
	}
	line, rest := raw[1:end], raw[end+2:]
	switch raw[0] {
	case '_':
		if len(line) == 0 && len(rest) == 0 {
			return nil, replyNil
		}
	case ':':
		if len(line) > 0 && len(rest) == 0 {
			return line, replyInt
		}
	case '$':
		if string(line) == "-1" && len(rest) == 0 {
			return nil, replyNil
		}
		n, ok := atoi(line)
		if ok && len(rest) == n+2 && rest[n] == '\r' && rest[n+1] == '\n' {
			return rest[:n:n], replyString
		}
	}
	return nil, replyOther
}

// atoi parses a non-negative decimal length.
func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 10 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// isSyntaxErr reports whether err is Redis refusing a command's syntax, as
// a Redis before 7.0 refuses SET with both NX and GET.
func isSyntaxErr(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.Contains(rerr.Error(), "syntax error")
}

// pxMillis is the Redis expiry, in milliseconds from now, of a value
// that may be dropped at expireAt: rounded up, and never zero, as PX
// needs a positive expiry. A delete (new == nil) has none.
func pxMillis(new []byte, expireAt time.Time) int64 {
	if new == nil {
		return 1
	}
	// Rounding by adding first would overflow the longest Duration,
	// which time.Until returns for an expiry centuries away, into 1ms.
	d := time.Until(expireAt)
	ms := d.Milliseconds()
	if d%time.Millisecond > 0 {
		ms++
	}
	return max(ms, 1)
}

// casArgs is the whole EVALSHA command of a transition of key k: one
// slice, which go-redis writes as it is.
func casArgs(k string, old, new []byte, ms int64) []any {
	args := make([]any, 4, 7)
	args[0], args[1], args[2], args[3] = "evalsha", casScript.Hash(), "1", k
	if old != nil {
		args = append(args, old)
	}
	if new != nil {
		args = append(args, new, ms)
	}
	return args
}

func casResult(res any, err error) ([]byte, bool, error) {
	if err != nil {
		return nil, false, err
	}
	switch v := res.(type) {
	case int64:
		return nil, v == 1, nil
	case string:
		return []byte(v), false, nil
	default:
		return nil, false, fmt.Errorf("unexpected script reply %T", res)
	}
}

// casAndWait runs the script and then WAIT on one connection to the node
// that owns k: WAIT counts the replicas that have every write made earlier
// on its own connection. WAIT is sent by itself, not pipelined with the
// script, so that go-redis gives its reply WaitTimeout (and a margin)
// rather than the client's ReadTimeout, and never resends the script
// because WAIT was slow.
//
// On a Cluster the node comes from the client's slot map, which goes stale
// when a failover or resharding moves the slot: the node then answers
// MOVED without running the script. A ClusterClient follows MOVED for the
// commands it routes itself; this one reloads the map and tries again.
func (b *Backend) casAndWait(ctx context.Context, k string, args []any) (any, error) {
	const maxRedirects = 3
	for redirects := 0; ; redirects++ {
		node, err := b.nodeFor(ctx, k)
		if err != nil {
			return nil, err
		}
		res, err := b.casAndWaitOn(ctx, node, k, args)
		c, cluster := b.rdb.(*redis.ClusterClient)
		// Only the script's own error says it did not run; WAIT's is
		// wrapped in ErrNotReplicated, after the swap was made.
		_, moved := redis.IsMovedError(err)
		if !moved || errors.Is(err, ErrNotReplicated) || !cluster || redirects == maxRedirects {
			return res, err
		}
		// ForEachMaster reloads the slot map before it returns.
		if err := c.ForEachMaster(ctx, func(context.Context, *redis.Client) error { return nil }); err != nil {
			return nil, err
		}
	}
}

// casAndWaitOn runs the script and WAIT on one connection to node.
func (b *Backend) casAndWaitOn(ctx context.Context, node *redis.Client, k string, args []any) (any, error) {
	cn := node.Conn()
	defer cn.Close()
	res, err := casRun(ctx, cn, args)
	if err != nil {
		return nil, err
	}
	if n, swapped := res.(int64); !swapped || n != 1 {
		return res, nil
	}
	acked, err := cn.Wait(ctx, b.wait, b.waitTO).Result()
	if err != nil {
		// The swap was made on the master; only WAIT's answer is missing.
		return res, fmt.Errorf("%w: redis wait: %w", ErrNotReplicated, err)
	}
	if acked < int64(b.wait) {
		return res, fmt.Errorf("%w: %d of %d replicas within %v", ErrNotReplicated, acked, b.wait, b.waitTO)
	}
	return res, nil
}

// nodeFor returns the client of the one server that owns k.
func (b *Backend) nodeFor(ctx context.Context, k string) (*redis.Client, error) {
	switch c := b.rdb.(type) {
	case *redis.Client:
		return c, nil
	case *redis.ClusterClient:
		return c.MasterForKey(ctx, k)
	case *redis.Ring:
		return c.GetShardClientForKey(k)
	default:
		return nil, fmt.Errorf("Config.WaitReplicas needs a *redis.Client, *redis.ClusterClient or *redis.Ring, not %T", b.rdb)
	}
}

// Delete implements idem.Backend with one DEL.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := b.rdb.Del(ctx, b.prefix+key).Err(); err != nil {
		return fail("del", err)
	}
	return nil
}

// scanBatch is the COUNT hint of each SCAN call, and so the most keys
// whose values are fetched in one pipeline.
const scanBatch = 256

// Scan implements idem.Backend with SCAN over keys matching the prefix,
// fetching each batch's values in one pipeline. On a Redis Cluster it
// scans every master in turn, on a Ring every shard. Keys come in no
// particular order, and as with SCAN itself a key may be seen twice when
// Redis rehashes during the scan; a key deleted or expired between SCAN
// and its read is skipped.
func (b *Backend) Scan(ctx context.Context, prefix string, fn func(key string, value []byte) error) error {
	nodes, err := b.nodes(ctx)
	if err != nil {
		return fail("scan", err)
	}
	match := globEscape(b.prefix+prefix) + "*"
	for _, n := range nodes {
		if err := b.scanNode(ctx, n, match, fn); err != nil {
			return err
		}
	}
	return nil
}

// nodes returns the clients to scan: every master of a cluster, every
// shard of a ring, or the client itself.
func (b *Backend) nodes(ctx context.Context) ([]redis.UniversalClient, error) {
	var mu sync.Mutex // protects nodes: ForEachMaster calls collect concurrently
	var nodes []redis.UniversalClient
	collect := func(_ context.Context, c *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		nodes = append(nodes, c)
		return nil
	}
	var err error
	switch c := b.rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, collect)
	case *redis.Ring:
		err = c.ForEachShard(ctx, collect)
	default:
		return []redis.UniversalClient{b.rdb}, nil
	}
	return nodes, err
}

func (b *Backend) scanNode(ctx context.Context, n redis.UniversalClient, match string, fn func(key string, value []byte) error) error {
	var cursor uint64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		keys, next, err := n.Scan(ctx, cursor, match, scanBatch).Result()
		if err != nil {
			return fail("scan", err)
		}
		if len(keys) > 0 {
			pipe := n.Pipeline()
			gets := make([]*redis.StringCmd, len(keys))
			for i, k := range keys {
				gets[i] = pipe.Get(ctx, k)
			}
			if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
				return fail("scan", err)
			}
			for i, k := range keys {
				v, err := gets[i].Bytes()
				if errors.Is(err, redis.Nil) {
					continue
				}
				if err != nil {
					return fail("scan", err)
				}
				if err := fn(strings.TrimPrefix(k, b.prefix), v); err != nil {
					return err
				}
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// globEscape quotes the characters SCAN's MATCH pattern treats specially.
func globEscape(s string) string {
	var sb strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// Close implements idem.Backend: it closes the pub/sub connection Watch
// opened, if any. It does not close the Redis client, which belongs to the
// caller (it may be shared with the rest of the service); close it after
// the store.
func (b *Backend) Close() error {
	if err := b.closeWatch(); err != nil {
		return fail("close pub/sub", err)
	}
	return nil
}
