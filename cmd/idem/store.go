package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/redisstore"
)

// storeFlags say which store a command works on: a Badger data directory
// or a Redis server. Every command that opens a store registers them with
// addStoreFlags and opens it with openStore.
type storeFlags struct {
	data        string // Badger data directory
	redis       string // Redis address or URL
	redisPrefix string // Redis key prefix; "" means redisstore.DefaultPrefix
	cluster     bool   // -redis names the seed nodes of a Redis Cluster
	sentinel    string // -redis names the Sentinels of this master
	postgres    string // Postgres URL (postgres.go)
	defaultData string // data directory used when neither -data nor -redis is given; "" means one is required
	discardLog  bool   // open with idem.Options.DiscardDamagedLog (idem recover)
}

func addStoreFlags(fs *flag.FlagSet) *storeFlags {
	f := &storeFlags{}
	fs.StringVar(&f.data, "data", "", "data directory `DIR` of the Badger store (this or -redis is required)")
	fs.StringVar(&f.redis, "redis", "", "use the Redis store at `ADDR` (host:port, or a redis:// or rediss:// URL for a password, database or TLS) instead of -data")
	fs.StringVar(&f.redisPrefix, "redis-prefix", "", "Redis key `PREFIX` of the store, with -redis (default \""+redisstore.DefaultPrefix+"\")")
	fs.BoolVar(&f.cluster, "redis-cluster", false, "-redis names seed nodes of a Redis Cluster (host:port,host:port or a URL with addr= parameters)")
	fs.StringVar(&f.sentinel, "redis-sentinel", "", "-redis names the Sentinels (host:port,host:port or a URL) of the master `NAME`")
	addPostgresFlag(fs, f)
	return f
}

// Timeouts of the Redis client. Context deadlines also apply to socket
// reads and writes (ContextTimeoutEnabled), so a stalled Redis fails a
// request instead of hanging it. The client never resends a command whose
// reply timed out (MaxRetries -1): a resent script that finds its own
// write would answer a repair with "the record changed" although it was
// made (see redisstore's package doc).
const (
	redisDialTimeout = 5 * time.Second
	redisIOTimeout   = 3 * time.Second
	redisPingTimeout = 5 * time.Second
)

// check reports how f was misused, as a usage error.
func (f *storeFlags) check() error {
	if f.postgres != "" {
		return f.checkPostgres()
	}
	switch {
	case f.data != "" && f.redis != "":
		return usageErr("-data and -redis are mutually exclusive: pass one")
	case f.redisPrefix != "" && f.redis == "":
		return usageErr("-redis-prefix needs -redis")
	case (f.cluster || f.sentinel != "") && f.redis == "":
		return usageErr("-redis-cluster and -redis-sentinel need -redis")
	case f.cluster && f.sentinel != "":
		return usageErr("-redis-cluster and -redis-sentinel are mutually exclusive: pass one")
	case strings.Contains(f.redis, ",") && !f.cluster && f.sentinel == "":
		return usageErr("-redis %s names several servers: pass -redis-cluster for a Redis Cluster, or -redis-sentinel MASTER for Sentinels", redactURL(f.redis))
	case f.data == "" && f.redis == "" && f.defaultData == "":
		return usageErr("no store given: pass -data DIR or -redis ADDR")
	}
	return nil
}

// notWithAdmin refuses -data and -redis beside -admin ADDR, which names
// the store another way.
func (f *storeFlags) notWithAdmin(admin string) error {
	if admin != "" && (f.data != "" || f.redis != "" || f.postgres != "") {
		return usageErr("-admin and -data or -redis are mutually exclusive: pass one")
	}
	return nil
}

// String names the store for people: "Badger store in DIR" or "Redis at
// ADDR, prefix P".
func (f *storeFlags) String() string {
	switch {
	case f.postgres != "":
		return "Postgres at " + redactPostgres(f.postgres)
	case f.cluster:
		return fmt.Sprintf("Redis Cluster at %s, prefix %q", redactURL(f.redis), f.prefix())
	case f.sentinel != "":
		return fmt.Sprintf("Redis master %q through Sentinels at %s, prefix %q", f.sentinel, redactURL(f.redis), f.prefix())
	case f.redis != "":
		return fmt.Sprintf("Redis at %s, prefix %q", redactURL(f.redis), f.prefix())
	}
	return "Badger store in " + f.dir()
}

func (f *storeFlags) dir() string {
	if f.data == "" {
		return f.defaultData
	}
	return f.data
}

func (f *storeFlags) prefix() string {
	if f.redisPrefix == "" {
		return redisstore.DefaultPrefix
	}
	return f.redisPrefix
}

// openStore opens the store f names. readOnly asks for a read-only open,
// which shares the directory with other readers and changes no byte in
// it; commands that only look use it. A directory whose process crashed
// cannot be read that way until a read-write open replays its logs: the
// error (wrapping idem.ErrNeedsRecovery) says how. The store logs to
// stderr (repairs, takeovers) and runs no background expiry. A directory
// held by another process gives an error wrapping idem.ErrLocked that
// says where to look instead.
func openStore(f *storeFlags, readOnly bool, stderr io.Writer) (*idem.Store, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	if f.data != "" {
		// Badger would create an empty store: say there is none instead.
		if _, err := os.Stat(f.data); err != nil {
			return nil, fmt.Errorf("no store at %s: %w", f.data, err)
		}
	}
	opts := &idem.Options{
		GCInterval: -1,
		ReadOnly:   readOnly,
		Logger:     slog.New(slog.NewTextHandler(stderr, nil)),
		// The store's own service may allow keys longer than the
		// default: the command must reach every key a store can hold.
		MaxKeySize: idem.MaxKeySizeLimit,
		// idem recover -discard-damaged-log
		DiscardDamagedLog: f.discardLog,
	}
	s, err := f.open(opts)
	if errors.Is(err, idem.ErrNeedsRecovery) {
		return nil, fmt.Errorf("%s was not closed cleanly (its process crashed or was killed), and reading it needs a recovery that writes, which this command never does: "+
			"run `idem recover -data %s` (or start the service on it once), then run this again: %w", f.dir(), f.dir(), err)
	}
	return s, err
}

// open opens the store f names with opts, creating a Badger store that
// does not exist yet. On Redis, the store owns the client it creates:
// closing the store closes it.
func (f *storeFlags) open(opts *idem.Options) (*idem.Store, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	if f.redis != "" {
		return f.openRedis(opts)
	}
	if f.postgres != "" {
		return f.openPostgres(opts)
	}
	dir := f.dir()
	s, err := idem.Open(dir, opts)
	if errors.Is(err, idem.ErrLocked) {
		return nil, fmt.Errorf("%s is in use by another process (a running idem server or application; Badger allows one process per directory): "+
			"use that process's admin endpoint instead (package idemadmin, or idem serve -admin): idem get -admin ADDR KEY, "+
			"idem list -admin ADDR, idem stats -admin ADDR, and the repairs with -admin where it allows them: %w", dir, idem.ErrLocked)
	}
	return s, err
}

func (f *storeFlags) openRedis(opts *idem.Options) (*idem.Store, error) {
	rdb, err := f.redisClient()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), redisPingTimeout)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("no answer from %s: %w", f, err)
	}
	b := redisstore.NewBackend(rdb, &redisstore.Config{Prefix: f.prefix()})
	s, err := idem.New(ownedClient{b, rdb}, opts)
	if err != nil {
		rdb.Close()
		return nil, err
	}
	return s, nil
}

// redisClient returns a client for the Redis f names: one server (a
// host:port or a redis:// or rediss:// URL), a Redis Cluster
// (-redis-cluster: seed nodes as a comma-separated list or a URL with addr=
// parameters) or a master found through Sentinels (-redis-sentinel NAME:
// the Sentinels as a list or a URL).
func (f *storeFlags) redisClient() (redis.UniversalClient, error) {
	isURL := strings.Contains(f.redis, "://")
	bad := func(err error) error {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its message quotes the whole URL, password included
		}
		return usageErr("-redis %s: %v", redactURL(f.redis), err)
	}
	switch {
	case f.cluster:
		o := &redis.ClusterOptions{Addrs: splitAddrs(f.redis)}
		if isURL {
			var err error
			if o, err = redis.ParseClusterURL(f.redis); err != nil {
				return nil, bad(err)
			}
		}
		o.ContextTimeoutEnabled, o.MaxRetries = true, -1
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = redisDialTimeout, redisIOTimeout, redisIOTimeout
		return redis.NewClusterClient(o), nil
	case f.sentinel != "":
		o := &redis.FailoverOptions{SentinelAddrs: splitAddrs(f.redis)}
		if isURL {
			var err error
			if o, err = redis.ParseFailoverURL(f.redis); err != nil {
				return nil, bad(err)
			}
		}
		o.MasterName = f.sentinel
		o.ContextTimeoutEnabled, o.MaxRetries = true, -1
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = redisDialTimeout, redisIOTimeout, redisIOTimeout
		return redis.NewFailoverClient(o), nil
	}
	o := &redis.Options{Addr: f.redis}
	if isURL {
		var err error
		if o, err = redis.ParseURL(f.redis); err != nil {
			return nil, bad(err)
		}
	}
	o.ContextTimeoutEnabled, o.MaxRetries = true, -1
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout = redisDialTimeout, redisIOTimeout, redisIOTimeout
	return redis.NewClient(o), nil
}

func splitAddrs(s string) []string {
	var addrs []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// redactURL hides the password of a redis:// URL, for messages and logs.
func redactURL(addr string) string {
	if !strings.Contains(addr, "://") {
		return addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// ownedClient is the Redis backend of a store the command opened: closing
// it closes the client too, which redisstore leaves to its caller.
type ownedClient struct {
	*redisstore.Backend
	rdb redis.UniversalClient
}

func (o ownedClient) Close() error {
	return errors.Join(o.Backend.Close(), o.rdb.Close())
}
