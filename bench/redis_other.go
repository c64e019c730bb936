//go:build !unix

package main

import "context"

func init() {
	register(workload{"redis", "embedded Get vs the Redis backend's (needs a Unix system to start redis-server)", func(context.Context, *env) ([]row, error) {
		return []row{{Workload: "redis", Operation: "Get completed, embedded vs Redis", Unit: "x",
			Goal: &goal{">=", 5, "x"}, Skipped: "the benchmark starts redis-server only on Unix systems"}}, nil
	}})
}
