//go:build unix

// Package pgtest starts a real PostgreSQL server for tests: initdb into a
// temporary directory, then postgres on a free loopback port with its unix
// socket in that directory, stopped and removed when the test (or the test
// binary) ends.
//
// The programs are looked up on PATH and then in /usr/lib/postgresql/*/bin,
// where Debian's postgresql package puts them (the newest version wins).
// PostgreSQL refuses to run as root, so when the tests run as root the
// server runs as the user postgres, which the package creates, and the
// temporary directory belongs to that user.
//
// When PostgreSQL is not installed the tests that need it are skipped with
// a message saying how to install it, unless the environment variable
// IDEM_REQUIRE_POSTGRES is "1", when they fail instead (CI sets it).
//
// A test package shares one server among its tests and gives each test a
// database of its own:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
//	func TestSomething(t *testing.T) {
//		url := pgtest.DB(t) // a fresh, empty database
//		...
//	}
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// startTimeout bounds initdb and the server's start until it accepts a
// connection.
const startTimeout = 60 * time.Second

// ErrNotInstalled is returned by StartServer when initdb and postgres are
// neither on PATH nor in /usr/lib/postgresql/*/bin.
var ErrNotInstalled = errors.New("PostgreSQL (initdb, postgres) is not on PATH nor in /usr/lib/postgresql/*/bin; install it to run the Postgres tests (Debian/Ubuntu: apt-get install postgresql)")

// Required reports whether a missing PostgreSQL must be a failure rather
// than a skip: the environment variable IDEM_REQUIRE_POSTGRES is "1".
func Required() bool { return os.Getenv("IDEM_REQUIRE_POSTGRES") == "1" }

// Bin returns the directory holding initdb and postgres, or an error
// wrapping ErrNotInstalled.
func Bin() (string, error) {
	if p, err := exec.LookPath("postgres"); err == nil {
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Newest major version first: "16" after "9" by number, not by text.
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, dir := range dirs {
		_, e1 := os.Stat(filepath.Join(dir, "initdb"))
		_, e2 := os.Stat(filepath.Join(dir, "postgres"))
		if e1 == nil && e2 == nil {
			return dir, nil
		}
	}
	return "", ErrNotInstalled
}

func version(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

// Server is one postgres process with its own data directory. Its
// methods are safe for simultaneous use by multiple goroutines.
type Server struct {
	// Host and Port are where the server listens: "127.0.0.1" and a free
	// port. SocketDir holds its unix socket.
	Host      string
	Port      int
	SocketDir string

	dir  string // temporary directory holding data/ and the socket
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	log  string        // the server's log file

	mu    sync.Mutex // protects admin
	admin *pgx.Conn  // to database postgres, for CREATE DATABASE
	stop  sync.Once
	dbs   atomic.Int64 // databases created, for their names
}

// StartServer runs initdb into a new temporary directory and starts
// postgres on a free loopback port, returning once it accepts
// connections. The caller stops it with Stop, which removes the
// directory. It returns an error wrapping ErrNotInstalled when PostgreSQL
// is missing.
func StartServer() (*Server, error) {
	bin, err := Bin()
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	cred, err := credential()
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{Host: "127.0.0.1", SocketDir: dir, dir: dir, log: filepath.Join(dir, "postgres.log")}
	if err := s.start(bin, cred); err != nil {
		s.Stop()
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	return s, nil
}

// credential returns who the server runs as: nil for the current user,
// or the user postgres when running as root.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, and PostgreSQL refuses to: %w (the postgresql package creates the user postgres)", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

func (s *Server) start(bin string, cred *syscall.Credential) error {
	if cred != nil {
		if err := os.Chown(s.dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	}
	data := filepath.Join(s.dir, "data")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = s.dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}

	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		s.Port = port
		if lastErr = s.run(bin, data, cred); lastErr == nil {
			return nil
		}
		// Most likely another process took the port between freePort and
		// the server's bind: try another one.
	}
	return lastErr
}

// run starts postgres on s.Port and waits until it accepts a connection.
func (s *Server) run(bin, data string, cred *syscall.Credential) error {
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	if cred != nil {
		_ = os.Chown(s.log, int(cred.Uid), int(cred.Gid))
	}
	s.cmd = exec.Command(filepath.Join(bin, "postgres"),
		"-D", data,
		"-p", strconv.Itoa(s.Port),
		"-k", s.SocketDir,
		"-c", "listen_addresses="+s.Host,
		// A test server: nothing needs to survive a power cut.
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=200",
	)
	s.cmd.Dir = s.dir
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: cred,
		// Its own process group, so that a test's ^C does not reach it
		// before Stop shuts it down.
		Setpgid: true,
		// If the test binary dies without calling Stop (a panic, a
		// timeout), the server shuts down at once (SIGQUIT: immediate
		// shutdown, its backends included) rather than run on.
		Pdeathsig: syscall.SIGQUIT,
	}
	s.done = make(chan struct{})
	started := make(chan error)
	go func(cmd *exec.Cmd, done chan struct{}) {
		// The kernel sends Pdeathsig when the thread that started the
		// process ends, not the process: keep this thread until the
		// server has exited.
		runtime.LockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			_ = cmd.Wait()
		}
		close(done)
	}(s.cmd, s.done)
	if err := <-started; err != nil {
		return err
	}

	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("postgres on port %d exited at start: %s", s.Port, s.logTail())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		cancel()
		if err == nil {
			s.admin = conn
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.kill()
	return fmt.Errorf("postgres on port %d did not accept connections within %v: %s", s.Port, startTimeout, s.logTail())
}

// URL returns the connection URL of database db on s, over TCP as the
// superuser postgres.
func (s *Server) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort(s.Host, strconv.Itoa(s.Port)),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// CreateDB creates a new, empty database and returns its URL.
func (s *Server) CreateDB(ctx context.Context) (string, error) {
	name := fmt.Sprintf("test_%d", s.dbs.Add(1))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.admin == nil {
		return "", errors.New("pgtest: server stopped")
	}
	if _, err := s.admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	return s.URL(name), nil
}

// Stop shuts the server down (a fast shutdown, then SIGKILL if it has not
// exited within 10 seconds), waits for it to exit and removes its
// directory. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.stop.Do(func() {
		s.mu.Lock()
		if s.admin != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = s.admin.Close(ctx)
			cancel()
			s.admin = nil
		}
		s.mu.Unlock()
		if s.cmd != nil && s.cmd.Process != nil {
			select {
			case <-s.done:
			default:
				// SIGINT is postgres's fast shutdown: it ends its
				// backends and exits.
				_ = s.cmd.Process.Signal(syscall.SIGINT)
				select {
				case <-s.done:
				case <-time.After(10 * time.Second):
					s.kill()
				}
			}
		}
		_ = os.RemoveAll(s.dir)
	})
}

// kill ends the server's whole process group at once and waits for the
// postmaster to exit.
func (s *Server) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
}

func (s *Server) logTail() string {
	b, err := os.ReadFile(s.log)
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, " | ")
}

// Start starts a server of the test's own, stopped when t ends; most tests
// want DB, which shares one server per test binary. It skips or fails the
// test (IDEM_REQUIRE_POSTGRES=1) when PostgreSQL is missing.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := StartServer()
	if err != nil {
		skipOrFail(t, err)
	}
	t.Cleanup(s.Stop)
	return s
}

func skipOrFail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, ErrNotInstalled) && !Required() {
		t.Skip(err.Error())
	}
	if errors.Is(err, ErrNotInstalled) {
		t.Fatalf("%v; IDEM_REQUIRE_POSTGRES=1 makes this a failure", err)
	}
	t.Fatal(err)
}

// shared is the server of DB, started on first use and stopped by Main.
var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// DB returns the URL of a new, empty database on the test binary's shared
// server, which is started on first use and stopped by Main. It skips or
// fails the test (IDEM_REQUIRE_POSTGRES=1) when PostgreSQL is missing.
func DB(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() { shared.srv, shared.err = StartServer() })
	if shared.err != nil {
		skipOrFail(t, shared.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, err := shared.srv.CreateDB(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// Main runs the tests of m and then stops the shared server, if DB
// started one. Call it from TestMain: os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Stop()
	}
	return code
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
