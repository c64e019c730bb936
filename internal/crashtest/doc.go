// Package crashtest measures what a client sees across crashes: its tests
// run a payments service as a child process, SIGKILL it again and again
// under clients that retry with the same key until they get an answer, and
// count the side effects each key ran.
//
// It holds tests only. They run in `go test` with a few kills; set
// IDEM_CRASH_KILLS (20 for the README's numbers) for a longer run:
//
//	IDEM_CRASH_KILLS=20 go test -run Crash -v ./internal/crashtest/
package crashtest
