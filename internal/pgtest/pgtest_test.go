//go:build unix

package pgtest_test

import (
	"context"
	"os"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/idemdb/idem/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestDB: each call gives another empty database on the shared server.
func TestDB(t *testing.T) {
	ctx := context.Background()
	a, b := pgtest.DB(t), pgtest.DB(t)
	if a == b {
		t.Fatalf("the same database twice: %s", a)
	}
	conn, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE t (x int)"); err != nil {
		t.Fatal(err)
	}
	conn2, err := pgx.Connect(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close(ctx)
	var n int
	if err := conn2.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 't'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatal("a table of one database seen in another")
	}
}

// TestStartStop: a server of the test's own is gone, with its directory,
// once stopped.
func TestStartStop(t *testing.T) {
	s := pgtest.Start(t)
	ctx := context.Background()
	u, err := s.CreateDB(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	s.Stop()
	if _, err := os.Stat(s.SocketDir); !os.IsNotExist(err) {
		t.Errorf("directory left behind: %v", err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("backend %d still running", pid)
	}
}
