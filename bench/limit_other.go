//go:build !(linux && (amd64 || arm64))

package main

import (
	"errors"
	"os/exec"
)

func cgroupUnavailable() string {
	return "the memory limit is set with a Linux cgroup v1 memory controller (linux/amd64 and linux/arm64 only)"
}

func runLimited(*exec.Cmd, int64) ([]byte, cgroupStats, error) {
	return nil, cgroupStats{}, errors.New("memory cgroups need Linux")
}

func evictPageCache(string) error { return nil }

func majorFaults() int64 { return 0 }
