//go:build linux && (amd64 || arm64)

package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupRoot is where the cgroup v1 memory controller is mounted.
const cgroupRoot = "/sys/fs/cgroup/memory"

// cgroupUnavailable says why a memory cgroup cannot be made here, or "".
func cgroupUnavailable() string {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "memory.limit_in_bytes")); err != nil {
		return fmt.Sprintf("no cgroup v1 memory controller at %s (%v); cgroup v2 is not supported by this workload", cgroupRoot, err)
	}
	if os.Geteuid() != 0 {
		return "making a memory cgroup needs root (this run is uid " + strconv.Itoa(os.Geteuid()) + ")"
	}
	return ""
}

// cgroupParent is the directory to make the bench's cgroup in: under this
// process's own memory cgroup when it can be found there, so the limit
// nests inside whatever limit the machine already sets, else the root.
func cgroupParent() string {
	if own := memoryCgroup(); own != "" {
		d := filepath.Join(cgroupRoot, filepath.Clean("/"+own))
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			return d
		}
	}
	return cgroupRoot
}

// runLimited runs cmd (a get child) inside a new memory cgroup limited to
// limit bytes, swap included when the kernel accounts it, and returns its
// stdout and what the cgroup recorded. The child is started, moved into
// the cgroup, and only then told to go on (a byte on its stdin), so
// nothing it opens is charged elsewhere. The cgroup is removed after.
func runLimited(cmd *exec.Cmd, limit int64) (out []byte, cg cgroupStats, err error) {
	dir := filepath.Join(cgroupParent(), fmt.Sprintf("idem-bench-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, cg, fmt.Errorf("memory cgroup: %w", err)
	}
	defer func() {
		// The directory can be removed once the child has left it, which
		// the kernel may take a moment to notice.
		var rmErr error
		for range 50 {
			if rmErr = syscall.Rmdir(dir); rmErr == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		err = errors.Join(err, fmt.Errorf("removing memory cgroup %s: %w", dir, rmErr))
	}()
	cg.Path, cg.LimitBytes = dir, limit
	if err := writeFile(filepath.Join(dir, "memory.limit_in_bytes"), limit); err != nil {
		return nil, cg, err
	}
	if _, err := os.Stat(filepath.Join(dir, "memory.memsw.limit_in_bytes")); err == nil {
		if err := writeFile(filepath.Join(dir, "memory.memsw.limit_in_bytes"), limit); err != nil {
			return nil, cg, err
		}
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, cg, err
	}
	defer pw.Close()
	var stdout bytes.Buffer
	cmd.Stdin, cmd.Stdout = pr, &stdout
	cmd.Env = append(cmd.Env, "IDEM_BENCH_WAIT=1", "IDEM_BENCH_CGROUP="+strings.TrimPrefix(dir, cgroupRoot))
	if err := cmd.Start(); err != nil {
		pr.Close()
		return nil, cg, err
	}
	pr.Close()
	if err := writeFile(filepath.Join(dir, "cgroup.procs"), int64(cmd.Process.Pid)); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, cg, err
	}
	if _, err := pw.Write([]byte{1}); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, cg, err
	}
	waitErr := cmd.Wait()
	cg.MaxUsage, _ = readInt(filepath.Join(dir, "memory.max_usage_in_bytes"))
	cg.Failcnt, _ = readInt(filepath.Join(dir, "memory.failcnt"))
	if data, err := os.ReadFile(filepath.Join(dir, "memory.oom_control")); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
				cg.OOMKills, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			}
		}
	}
	if waitErr != nil {
		return nil, cg, fmt.Errorf("%w (memory cgroup: peak %d MB, memory.failcnt %d, %d OOM kills)", waitErr, cg.MaxUsage>>20, cg.Failcnt, cg.OOMKills)
	}
	return stdout.Bytes(), cg, nil
}

func writeFile(path string, v int64) error {
	return os.WriteFile(path, []byte(strconv.FormatInt(v, 10)), 0o644)
}

// evictPageCache writes back and drops from the page cache every file
// under dir (POSIX_FADV_DONTNEED), touching no other file's pages.
func evictPageCache(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Sync(); err != nil {
			return err
		}
		const fadvDontNeed = 4
		if _, _, errno := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, fadvDontNeed, 0, 0); errno != 0 {
			return fmt.Errorf("fadvise %s: %w", path, errno)
		}
		return nil
	})
}

// majorFaults returns the page faults of this process that had to read
// from disk so far.
func majorFaults() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Majflt
}
