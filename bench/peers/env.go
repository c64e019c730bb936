package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// env is what the rows of one run share: a temporary directory, the
// settings, and one redis-server started on first use.
type env struct {
	root     string
	duration time.Duration
	client   string // "nethttp" or "fasthttp"
	log      io.Writer
	// profiling labels the servers' handler goroutines by side (pprof
	// label "side"), as the runner labels the callers.
	profiling bool

	redisTried   bool
	redis        *exec.Cmd
	redisDone    chan struct{}
	redisAddrs   string
	redisErr     error
	redisVersion string
	dirs         atomic.Int64
	fsyncNote    string
}

// errNoRedis is returned when redis-server is not on PATH.
var errNoRedis = errors.New("redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server)")

// tempDir returns a new directory under the run's root.
func (e *env) tempDir(name string) (string, error) {
	dir := filepath.Join(e.root, fmt.Sprintf("%s-%d", name, e.dirs.Add(1)))
	return dir, os.MkdirAll(dir, 0o755)
}

// redisAddr starts redis-server on a free loopback port the first time it
// is called, with no persistence (as idem's own tests and bench run it),
// and returns its address. internal/redistest does the same for the
// parent module; a nested module cannot import it.
func (e *env) redisAddr() (string, error) {
	if e.redisTried {
		return e.redisAddrs, e.redisErr
	}
	e.redisTried = true
	e.redisAddrs, e.redisErr = e.startRedis()
	return e.redisAddrs, e.redisErr
}

func (e *env) startRedis() (string, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", errNoRedis
	}
	dir, err := e.tempDir("redis")
	if err != nil {
		return "", err
	}
	var lastErr error
	for range 5 {
		port, err := freePort()
		if err != nil {
			return "", err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"),
			"--save", "", "--appendonly", "no", "--daemonize", "no")
		if err := cmd.Start(); err != nil {
			return "", err
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		if lastErr = waitPing(addr, done); lastErr == nil {
			e.redis, e.redisDone = cmd, done
			e.redisVersion = redisVersion(addr)
			fmt.Fprintf(e.log, "redis-server %s on %s\n", e.redisVersion, addr)
			return addr, nil
		}
		_ = cmd.Process.Kill()
		<-done
		// Most likely another process took the port first: try another.
	}
	return "", fmt.Errorf("could not start redis-server: %w", lastErr)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitPing(addr string, done <-chan struct{}) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("redis-server on %s exited at start", addr)
		default:
		}
		err := c.Ping(context.Background()).Err()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s does not answer PING: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func redisVersion(addr string) string {
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	info, err := c.Info(context.Background(), "server").Result()
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v
		}
	}
	return ""
}

// close stops the redis-server this run started.
func (e *env) close() {
	if e.redis != nil {
		_ = e.redis.Process.Kill()
		<-e.redisDone
		e.redis = nil
	}
}

// newRedisClient returns a go-redis client with its default pool on the
// run's server.
func (e *env) newRedisClient() (*redis.Client, error) {
	addr, err := e.redisAddr()
	if err != nil {
		return nil, err
	}
	return redis.NewClient(&redis.Options{Addr: addr}), nil
}

// resetRedisStats zeroes the server's per-command statistics, so that
// redisStats covers one row's timed rounds.
func (e *env) resetRedisStats() error {
	c, err := e.newRedisClient()
	if err != nil {
		return err
	}
	defer c.Close()
	return c.ConfigResetStat(context.Background()).Err()
}

// redisStats returns the server's own time per call of the commands the
// rows send (INFO commandstats), both sides together: the part of a round
// trip a client-side profile cannot see.
func (e *env) redisStats() string {
	c, err := e.newRedisClient()
	if err != nil {
		return ""
	}
	defer c.Close()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		return ""
	}
	var parts []string
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		cmd, isCmd := strings.CutPrefix(name, "cmdstat_")
		if !ok || !isCmd || strings.HasPrefix(cmd, "config") || strings.HasPrefix(cmd, "client") || cmd == "info" || cmd == "ping" || cmd == "hello" {
			continue
		}
		var calls, perCall string
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "calls":
				calls = v
			case "usec_per_call":
				perCall = v
			}
		}
		parts = append(parts, fmt.Sprintf("%s %sµs (%s calls)", strings.ToUpper(cmd), perCall, calls))
	}
	if len(parts) == 0 {
		return ""
	}
	slices.Sort(parts)
	return "redis-server time per call, both sides (the GETs and SETs a script makes are counted too, and their time is in EVALSHA's): " + strings.Join(parts, ", ")
}

// fsyncLatency measures what one small durable write costs on the disk
// under the run's directory (a 4 KiB write and fsync, 200 times), once a
// run: the durable rows depend on it more than on anything idem does.
func (e *env) fsyncLatency() string {
	if e.fsyncNote != "" {
		return e.fsyncNote
	}
	dir, err := e.tempDir("fsync")
	if err != nil {
		return ""
	}
	f, err := os.Create(filepath.Join(dir, "probe"))
	if err != nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, 4096)
	var lat []time.Duration
	for i := range 200 {
		t0 := time.Now()
		if _, err := f.WriteAt(buf, int64(i%16)*4096); err != nil {
			return ""
		}
		if err := f.Sync(); err != nil {
			return ""
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	e.fsyncNote = fmt.Sprintf("a 4 KiB write + fsync in the run's directory takes %v p50, %v p90 here",
		lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*9/10].Round(time.Microsecond))
	return e.fsyncNote
}
