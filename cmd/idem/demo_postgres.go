package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/pgstore"
)

// demoLease is the lease of the charge whose process the Postgres demo
// crashes: the retry takes the key over once it lapses.
const demoLease = time.Second

// demoPostgres is the Postgres of demo -postgres: a schema of its own,
// made for one run and dropped afterwards, holding the store's table and
// demo_charges.
type demoPostgres struct {
	pool   *pgxpool.Pool
	schema string
	store  *idem.Store // on a pgstore.Backend, as pgstore.DoTx needs
}

// openDemoPostgres makes a fresh schema in the database f names, and a
// store in it.
func openDemoPostgres(f *storeFlags) (*demoPostgres, error) {
	ctx, cancel := context.WithTimeout(context.Background(), postgresTimeout)
	defer cancel()
	pool, err := f.connectPostgres(ctx)
	if err != nil {
		return nil, err
	}
	pg := &demoPostgres{pool: pool, schema: "idem_demo_" + strings.ToLower(rand.Text()[:10])}
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+pg.ident()); err != nil {
		pool.Close()
		return nil, fmt.Errorf("%s: creating the demo's schema: %w", f, err)
	}
	b, err := pgstore.NewBackend(ctx, pool, &pgstore.Config{Table: pg.schema + "." + pgstore.DefaultTable})
	if err == nil {
		pg.store, err = idem.New(b, nil)
	}
	if err != nil {
		return nil, errors.Join(err, pg.close())
	}
	return pg, nil
}

func (pg *demoPostgres) ident(names ...string) string {
	return pgx.Identifier(append([]string{pg.schema}, names...)).Sanitize()
}

// close closes the store, drops the schema with all it holds, and closes
// the pool.
func (pg *demoPostgres) close() error {
	var err error
	if pg.store != nil {
		err = pg.store.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), postgresTimeout)
	defer cancel()
	if _, derr := pg.pool.Exec(ctx, "DROP SCHEMA "+pg.ident()+" CASCADE"); derr != nil {
		err = errors.Join(err, fmt.Errorf("dropping the demo's schema %s: %w", pg.schema, derr))
	}
	pg.pool.Close()
	return err
}

func pgStore(pg *demoPostgres) *idem.Store {
	if pg == nil {
		return nil
	}
	return pg.store
}

// demoTx shows what only Postgres can do: the charge row and the key's
// record commit in one transaction (pgstore.DoTx). A process that dies
// after inserting the row and completing the record, before COMMIT,
// leaves neither; the client's retry charges once, and a later retry
// gets the stored answer without charging again.
func demoTx(ctx context.Context, pg *demoPostgres, w io.Writer) error {
	const key = "order-4e1b-charge"
	charges := pg.ident("demo_charges")
	if _, err := pg.pool.Exec(ctx, `CREATE TABLE `+charges+` (
	id              bigserial PRIMARY KEY,
	idempotency_key text NOT NULL,
	amount          bigint NOT NULL,
	currency        text NOT NULL
)`); err != nil {
		return fmt.Errorf("creating demo_charges: %w", err)
	}
	fp := sha256.Sum256([]byte("POST /charges 5000 USD"))
	ran := 0
	charge := func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
		ran++
		var id int64
		if err := tx.QueryRow(ctx, "INSERT INTO "+charges+" (idempotency_key, amount, currency) VALUES ($1, 5000, 'USD') RETURNING id", key).Scan(&id); err != nil {
			return nil, err
		}
		return fmt.Appendf(nil, `{"charge": %d, "amount": 5000, "currency": "USD"}`, id), nil
	}
	show := func() error {
		rows, err := pg.pool.Query(ctx, "SELECT id, amount, currency FROM "+charges+" WHERE idempotency_key = $1 ORDER BY id", key)
		if err != nil {
			return err
		}
		var lines []string
		for rows.Next() {
			var id, amount int64
			var currency string
			if err := rows.Scan(&id, &amount, &currency); err != nil {
				rows.Close()
				return err
			}
			lines = append(lines, fmt.Sprintf("  id %d, %d %s", id, amount, currency))
		}
		if err := rows.Err(); err != nil {
			return err
		}
		fmt.Fprintf(w, "  SELECT id, amount, currency FROM demo_charges WHERE idempotency_key = '%s': %d rows\n", key, len(lines))
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
		fmt.Fprintf(w, "  idem get %s:\n", key)
		rec, err := pg.store.Get(ctx, key)
		if err != nil {
			return err
		}
		var b bytes.Buffer
		if err := printRecord(&b, rec, time.Now()); err != nil {
			return err
		}
		for _, l := range strings.SplitAfter(strings.TrimSuffix(b.String(), "\n"), "\n") {
			fmt.Fprint(w, "    ", l)
		}
		fmt.Fprintln(w)
		return nil
	}

	fmt.Fprintf(w, "\nCharging 5000 USD with key %q, the charge row and the key's record in one Postgres transaction (pgstore.DoTx):\n", key)
	if err := crashBeforeCommit(ctx, pg, key, fp[:], charge); err != nil {
		return fmt.Errorf("attempt 1: %w", err)
	}
	fmt.Fprintf(w, "Attempt 1: inserted the charge row and completed the record in the transaction; the process died before COMMIT "+
		"(simulated: its connection dropped). Postgres rolled both back: no charge row, and the record is not completed "+
		"(in progress under the dead process's lease until it lapses):\n")
	if err := show(); err != nil {
		return err
	}

	// The client retries; the dead process's lease lapses first.
	var resp []byte
	var replayed bool
	var err error
	for deadline := time.Now().Add(demoLease + 10*time.Second); ; {
		resp, replayed, err = pgstore.DoTx(ctx, pg.store, pg.pool, key, fp[:], charge)
		if !(errors.Is(err, idem.ErrInProgress) || errors.Is(err, pgstore.ErrLocked)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || replayed {
		return fmt.Errorf("attempt 2: replayed %v: %w", replayed, err)
	}
	fmt.Fprintf(w, "Attempt 2, once the dead process's lease lapsed (%v here): charged: %s\n", demoLease, resp)
	if err := show(); err != nil {
		return err
	}

	resp, replayed, err = pgstore.DoTx(ctx, pg.store, pg.pool, key, fp[:], charge)
	if err != nil || !replayed {
		return fmt.Errorf("attempt 3: replayed %v: %w", replayed, err)
	}
	fmt.Fprintf(w, "Attempt 3: completed (duplicate, returned cached): %s\n", resp)
	var rows int
	if err := pg.pool.QueryRow(ctx, "SELECT count(*) FROM "+charges+" WHERE idempotency_key = $1", key).Scan(&rows); err != nil {
		return err
	}
	fmt.Fprintf(w, "Charge rows for %q: %d (the charge ran %d times; its first run was rolled back)\n", key, rows, ran)
	if rows != 1 {
		return fmt.Errorf("%d charge rows for key %q, want 1", rows, key)
	}
	return nil
}

// crashBeforeCommit does what a process that dies before COMMIT leaves
// behind: it takes key's lease, runs charge in a transaction, completes
// the record in it (pgstore.CompleteTx), and then drops the connection
// instead of committing, so that Postgres rolls the transaction back and
// the lease stays with no one to end it.
func crashBeforeCommit(ctx context.Context, pg *demoPostgres, key string, fp []byte, charge func(context.Context, pgx.Tx) ([]byte, error)) error {
	lease, _, err := pg.store.Begin(idem.WithLeaseTTL(ctx, demoLease), key, fp)
	if err != nil {
		return err
	}
	if lease == nil {
		return fmt.Errorf("key %q was used before", key)
	}
	conn, err := pg.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	raw := conn.Hijack()
	defer raw.Close(context.WithoutCancel(ctx))
	tx, err := raw.Begin(ctx)
	if err != nil {
		return err
	}
	resp, err := charge(ctx, tx)
	if err != nil {
		return err
	}
	if err := pgstore.CompleteTx(ctx, tx, lease, resp); err != nil {
		return err
	}
	return raw.PgConn().Conn().Close() // no COMMIT: the process is gone
}
