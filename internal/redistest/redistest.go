//go:build unix

// Package redistest starts real redis-server processes for tests: a single
// server, a replica of one, a Sentinel, or a Redis Cluster, each on free
// loopback ports in the test's temporary directory, stopped when the test
// ends.
//
// When redis-server is not on PATH the tests that need it are skipped with a
// message saying how to install it, unless the environment variable
// IDEM_REQUIRE_REDIS is "1", when they fail instead (CI sets it).
//
// StartServer does the same outside a test (the benchmark report uses it).
package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long a server may take to answer PING.
const startTimeout = 10 * time.Second

// ErrNotInstalled is returned by StartServer when redis-server is not on
// PATH.
var ErrNotInstalled = errors.New("redis-server is not on PATH; install it to run the Redis tests (Debian/Ubuntu: apt-get install redis-server)")

// Required reports whether a missing redis-server must be a failure rather
// than a skip: the environment variable IDEM_REQUIRE_REDIS is "1".
func Required() bool { return os.Getenv("IDEM_REQUIRE_REDIS") == "1" }

// Server is one redis-server process started by a test, or by StartServer.
// Its methods are meant for one goroutine.
type Server struct {
	// Addr is the server's "127.0.0.1:port".
	Addr string

	t    testing.TB // nil for a server from StartServer
	dir  string
	args []string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Require returns the path of redis-server, or ends the test: skipped with
// how to install it, or failed when IDEM_REQUIRE_REDIS=1.
func Require(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("redis-server")
	if err == nil {
		return p
	}
	if Required() {
		t.Fatalf("%v; IDEM_REQUIRE_REDIS=1 makes this a failure", ErrNotInstalled)
	}
	t.Skip(ErrNotInstalled.Error())
	return ""
}

// Start starts a standalone redis-server with no persistence and returns
// it once it answers PING. extra are more redis-server arguments
// ("--appendonly", "yes"). The server is stopped when t ends.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	return start(t, false, "", extra)
}

// StartSentinel starts a Redis Sentinel (redis-server in sentinel mode)
// that monitors master under the name masterName, with a quorum of one,
// and returns it once it reports the master's address. conf are more
// lines of its configuration file, written after the monitor line
// ("sentinel down-after-milliseconds NAME 500"). It is stopped when t
// ends.
func StartSentinel(t testing.TB, master *Server, masterName string, conf ...string) *Server {
	t.Helper()
	host, port, _ := net.SplitHostPort(master.Addr)
	file := fmt.Sprintf("sentinel monitor %s %s %s 1\n", masterName, host, port)
	for _, line := range conf {
		file += line + "\n"
	}
	s := start(t, false, file, []string{"--sentinel"})
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		reply, err := Command(s.Addr, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", masterName)
		if err == nil && strings.Contains(reply, port) {
			return s
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("redistest: sentinel %s does not report master %s within %v", s.Addr, masterName, startTimeout)
	return nil
}

// start starts a server for t: a cluster node when cluster is set, and
// with conf, when not empty, as its configuration file (which Sentinel
// needs, and rewrites).
func start(t testing.TB, cluster bool, conf string, extra []string) *Server {
	t.Helper()
	bin := Require(t)
	s, err := launch(bin, t.TempDir(), cluster, conf, extra)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	s.t = t
	t.Cleanup(s.Stop)
	return s
}

// StartServer starts a standalone redis-server with no persistence, like
// Start, outside a test: its files go in a directory under dir, and the
// caller stops it with Stop (Pause, Resume, Restart and StartReplica are
// for servers started by Start). It returns an error wrapping
// ErrNotInstalled when redis-server is not on PATH.
func StartServer(dir string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redistest: %w", ErrNotInstalled)
	}
	s, err := launch(bin, dir, false, "", nil)
	if err != nil {
		return nil, fmt.Errorf("redistest: %w", err)
	}
	return s, nil
}

// launch starts redis-server from bin on a free loopback port, with its
// files in a new directory under root, and conf as its configuration file
// when conf is not empty.
func launch(bin, root string, cluster bool, conf string, extra []string) (*Server, error) {
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort(cluster)
		if err != nil {
			return nil, err
		}
		dir := filepath.Join(root, "redis-"+strconv.Itoa(port))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		var args []string
		if conf != "" {
			file := filepath.Join(dir, "redis.conf")
			if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
				return nil, err
			}
			args = append(args, file)
		}
		args = append(args,
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"),
			"--save", "", "--appendonly", "no", "--daemonize", "no",
			// A replica's first sync starts at once, not after the
			// default five seconds spent waiting for more replicas.
			"--repl-diskless-sync-delay", "0",
		)
		if cluster {
			args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"))
		}
		s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, args: append(args, extra...)}
		if lastErr = s.run(bin); lastErr == nil {
			return s, nil
		}
		// Most likely another process took the port between freePort and
		// the server's bind: try another one.
	}
	return nil, fmt.Errorf("could not start redis-server: %w", lastErr)
}

// run starts the process and waits until it answers PING.
func (s *Server) run(bin string) error {
	s.cmd = exec.Command(bin, s.args...)
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(s.cmd, s.done)
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("redis-server on %s exited at start: %s", s.Addr, s.logTail())
		default:
		}
		if reply, err := Command(s.Addr, "PING"); err == nil && reply == "PONG" {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.kill()
	return fmt.Errorf("redis-server on %s did not answer PING within %v: %s", s.Addr, startTimeout, s.logTail())
}

// Stop kills the server at once (SIGKILL, as a crash would) and waits for
// it to exit. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.kill()
}

func (s *Server) kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}

// Pause stops the server's process with SIGSTOP: connections stay open
// but nothing is answered, as with a server stalled or unreachable behind
// a dropped network. Resume undoes it; Stop works on a paused server.
func (s *Server) Pause() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		s.t.Fatalf("redistest: pause %s: %v", s.Addr, err)
	}
}

// Resume continues a paused server.
func (s *Server) Resume() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		s.t.Fatalf("redistest: resume %s: %v", s.Addr, err)
	}
}

// Restart starts the stopped server again on the same port, in the same
// directory and with the same arguments.
func (s *Server) Restart() {
	s.t.Helper()
	s.kill()
	if err := s.run(Require(s.t)); err != nil {
		s.t.Fatalf("redistest: restart: %v", err)
	}
}

// StartReplica starts a second server replicating from s and waits until
// the link is up. The replica is stopped when the test ends.
func (s *Server) StartReplica() *Server {
	s.t.Helper()
	host, port, _ := net.SplitHostPort(s.Addr)
	r := Start(s.t, "--replicaof", host, port)
	// Up on the replica's side, and online on the master's: only then
	// does the master count it in WAIT.
	_, rport, _ := net.SplitHostPort(r.Addr)
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		info, err := Command(r.Addr, "INFO", "replication")
		if err == nil && strings.Contains(info, "master_link_status:up") {
			minfo, err := Command(s.Addr, "INFO", "replication")
			if err == nil && strings.Contains(minfo, "port="+rport+",state=online") {
				return r
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("redistest: replica %s did not come online on %s within %v", r.Addr, s.Addr, startTimeout)
	return nil
}

func (s *Server) logTail() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// Cluster is a Redis Cluster started by StartCluster or
// StartClusterReplicas.
type Cluster struct {
	// Addrs are the nodes' "127.0.0.1:port" addresses.
	Addrs []string
	Nodes []*Server
}

// StartCluster starts three cluster-enabled servers, joins them with
// `redis-cli --cluster create` and returns once every node reports
// cluster_state:ok. It needs redis-cli beside redis-server.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	return StartClusterReplicas(t, 3, 0)
}

// StartClusterReplicas starts a cluster of masters masters, each with
// replicas replicas (`redis-cli --cluster create --cluster-replicas`), and
// returns once every node reports cluster_state:ok and every replica's
// link to its master is up. extra are more redis-server arguments for
// every node ("--cluster-node-timeout", "500"). Which nodes are masters is
// redis-cli's choice: ask the cluster (CLUSTER NODES, or a client's
// MasterForKey).
func StartClusterReplicas(t testing.TB, masters, replicas int, extra ...string) *Cluster {
	t.Helper()
	Require(t)
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatalf("redistest: redis-server is installed but redis-cli is not: %v", err)
	}
	c := &Cluster{}
	for i := 0; i < masters*(1+replicas); i++ {
		n := start(t, true, "", extra)
		c.Nodes = append(c.Nodes, n)
		c.Addrs = append(c.Addrs, n.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range c.Addrs {
		for {
			info, err := Command(a, "CLUSTER", "INFO")
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				repl, err := Command(a, "INFO", "replication")
				if err == nil && (strings.Contains(repl, "role:master") || strings.Contains(repl, "master_link_status:up")) {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("redistest: cluster node %s not ready: %q %v", a, info, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// Node returns the cluster's node at addr, or nil.
func (c *Cluster) Node(addr string) *Server {
	for _, n := range c.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// freePort returns a loopback port nobody listens on. For a cluster node
// the bus port (port+10000) must be free too.
func freePort(cluster bool) (int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		if !cluster {
			l.Close()
			return port, nil
		}
		if port+10000 > 65535 {
			l.Close()
			continue
		}
		bus, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000)))
		l.Close()
		if err != nil {
			continue
		}
		bus.Close()
		return port, nil
	}
	return 0, fmt.Errorf("no free loopback port pair found")
}

// Command sends one command to addr over a fresh connection, in the RESP
// protocol, and returns its reply as a string (an array's elements joined
// by spaces). It is for readiness checks, so that the helper needs no
// client library.
func Command(addr string, args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(b.String())); err != nil {
		return "", err
	}
	return readReply(bufio.NewReader(conn))
}

// readReply reads one RESP reply: a status, error, integer, bulk string,
// or an array of those (its elements joined by spaces).
func readReply(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "+"):
		return line[1:], nil
	case strings.HasPrefix(line, "-"):
		return "", fmt.Errorf("redis: %s", line[1:])
	case strings.HasPrefix(line, ":"):
		return line[1:], nil
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("redis: bad bulk reply %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case strings.HasPrefix(line, "*"):
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("redis: bad array reply %q", line)
		}
		elems := make([]string, 0, max(n, 0))
		for range n {
			e, err := readReply(r)
			if err != nil {
				return "", err
			}
			elems = append(elems, e)
		}
		return strings.Join(elems, " "), nil
	default:
		return "", fmt.Errorf("redis: unexpected reply %q", line)
	}
}
