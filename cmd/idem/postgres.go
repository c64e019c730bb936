package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/pgstore"
)

// postgresTimeout bounds connecting to Postgres, and finding or creating
// the table, when a command opens the store.
const postgresTimeout = 10 * time.Second

func addPostgresFlag(fs *flag.FlagSet, f *storeFlags) {
	fs.StringVar(&f.postgres, "postgres", "", "use the Postgres store at `URL` (postgres://user:password@host:port/db, or a key=value connection string), "+
		"in its table "+pgstore.DefaultTable+", instead of -data")
}

// checkPostgres reports how -postgres was misused, as a usage error.
func (f *storeFlags) checkPostgres() error {
	switch {
	case f.data != "" || f.redis != "":
		return usageErr("-postgres, -data and -redis are mutually exclusive: pass one")
	case f.redisPrefix != "" || f.cluster || f.sentinel != "":
		return usageErr("-redis-prefix, -redis-cluster and -redis-sentinel need -redis")
	}
	return nil
}

// openPostgres opens the store in the Postgres database f names. The
// store owns the pool it creates: closing the store closes it. A
// read-only open refuses a database without the table rather than create
// it.
func (f *storeFlags) openPostgres(opts *idem.Options) (*idem.Store, error) {
	ctx, cancel := context.WithTimeout(context.Background(), postgresTimeout)
	defer cancel()
	pool, err := f.connectPostgres(ctx)
	if err != nil {
		return nil, err
	}
	if opts != nil && opts.ReadOnly {
		var exists bool
		if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgstore.DefaultTable).Scan(&exists); err != nil {
			pool.Close()
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if !exists {
			pool.Close()
			return nil, fmt.Errorf("no store at %s: there is no table %s", f, pgstore.DefaultTable)
		}
	}
	b, err := pgstore.NewBackend(ctx, pool, nil)
	if err != nil {
		pool.Close()
		return nil, err
	}
	s, err := idem.New(ownedPool{b, pool}, opts)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// connectPostgres returns a pool of connections to the Postgres database f
// names, once it answers.
func (f *storeFlags) connectPostgres(ctx context.Context) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(f.postgres)
	if err != nil {
		// pgx's message quotes the connection string, password and all
		// where it cannot tell where the password is.
		return nil, usageErr("-postgres %s: not a postgres:// URL or a key=value connection string", redactPostgres(f.postgres))
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("no answer from %s: %w", f, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("no answer from %s: %w", f, err)
	}
	return pool, nil
}

// ownedPool is the Postgres backend of a store the command opened:
// closing it closes the pool too, which pgstore leaves to its caller.
type ownedPool struct {
	*pgstore.Backend
	pool *pgxpool.Pool
}

func (o ownedPool) Close() error {
	err := o.Backend.Close()
	o.pool.Close()
	return err
}

var kvPassword = regexp.MustCompile(`((?:^|\s)(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)`)

// redactPostgres hides the passwords of a Postgres connection string, a
// URL or key=value pairs, for messages and logs.
func redactPostgres(conn string) string {
	if !strings.Contains(conn, "://") {
		return kvPassword.ReplaceAllString(conn, "${1}xxxxx")
	}
	u, err := url.Parse(conn)
	if err != nil {
		return "(unparsable URL)"
	}
	q := u.Query()
	for _, k := range []string{"password", "sslpassword"} {
		if q.Has(k) {
			q.Set(k, "xxxxx")
		}
	}
	u.RawQuery = q.Encode()
	return u.Redacted()
}
