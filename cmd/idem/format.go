package main

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/idemdb/idem"
)

// printRecord writes r for people: one aligned field a line, times in
// local time with how long ago or until, and a safe preview of the
// response.
func printRecord(w io.Writer, r *idem.Record, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := r.State.String()
	switch {
	case r.LeaseLapsed(now):
		state += " (STALE: the lease lapsed " + ago(now, r.LeaseUntil) + "; the next retry takes it over, or: idem release / idem fail)"
	case r.State == idem.StateInProgress:
		state += " (lease live: a holder may be running it)"
	case r.State == idem.StateFailed && r.Retryable:
		state += " (retryable: the next retry runs it again)"
	case r.State == idem.StateFailed:
		state += " (permanent: replayed to retries)"
	}
	fmt.Fprintf(tw, "key:\t%s\n", r.Key)
	fmt.Fprintf(tw, "state:\t%s\n", state)
	fmt.Fprintf(tw, "attempts:\t%d\n", r.Attempts)
	fmt.Fprintf(tw, "token:\t%d\n", r.Token)
	fmt.Fprintf(tw, "fingerprint:\t%s\n", orNone(hex.EncodeToString(r.Fingerprint)))
	fmt.Fprintf(tw, "created:\t%s\n", when(now, r.CreatedAt))
	fmt.Fprintf(tw, "updated:\t%s\n", when(now, r.UpdatedAt))
	if r.State == idem.StateInProgress {
		fmt.Fprintf(tw, "lease until:\t%s\n", when(now, r.LeaseUntil))
	}
	fmt.Fprintf(tw, "expires:\t%s\n", when(now, r.ExpiresAt))
	fmt.Fprintf(tw, "response:\t%d bytes %s\n", len(r.Response), preview(r.Response, 120))
	return tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// when formats t in local time with its distance from now.
func when(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05 MST") + " (" + relative(now, t) + ")"
}

// relative says "in 23h" or "5m ago".
func relative(now, t time.Time) string {
	if t.After(now) {
		return "in " + short(t.Sub(now))
	}
	return ago(now, t)
}

func ago(now, t time.Time) string { return short(now.Sub(t)) + " ago" }

// short formats d to two units at most: "2d3h", "23h5m", "4m10s", "3s".
func short(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd%dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, d%time.Hour/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%ds", d/time.Minute, d%time.Minute/time.Second)
	}
	return fmt.Sprintf("%ds", d/time.Second)
}

// preview returns a form of b safe to print on a terminal: quoted text with
// escapes when b is mostly printable UTF-8, otherwise hex; at most max
// bytes of b, with "..." when cut.
func preview(b []byte, max int) string {
	if len(b) == 0 {
		return ""
	}
	p, more := b, ""
	if len(p) > max {
		p, more = p[:max], "..."
		for i := 1; i < utf8.UTFMax && !utf8.Valid(p); i++ {
			p = p[:len(p)-1] // back off to a whole rune
		}
	}
	if printable(p) {
		return strconv.Quote(string(p)) + more
	}
	if len(p) > max/2 {
		p, more = p[:max/2], "..."
	}
	return "hex " + hex.EncodeToString(p) + more
}

func printable(p []byte) bool {
	if !utf8.Valid(p) {
		return false
	}
	bad := 0
	for _, r := range string(p) {
		if !unicode.IsPrint(r) && !unicode.IsSpace(r) {
			bad++
		}
	}
	return bad*10 <= utf8.RuneCount(p)
}

// stdin is where confirmations are read from.
var stdin io.Reader = os.Stdin

// errAborted is returned when the operator does not confirm.
var errAborted = errors.New("not confirmed: nothing changed")

// confirm asks question on w and reads the answer from stdin: "y" or
// "yes" goes ahead. yes (the -yes flag) skips the question.
func confirm(w io.Writer, yes bool, question string) error {
	if yes {
		return nil
	}
	fmt.Fprintf(w, "%s [y/N] ", question)
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && line == "" {
		fmt.Fprintln(w)
		return fmt.Errorf("%w (no answer on stdin; pass -yes to skip the question)", errAborted)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errAborted
}

// oneKey returns the single KEY argument of a command.
func oneKey(args []string) (string, error) {
	if len(args) != 1 {
		return "", usageErr("want exactly one KEY argument, got %d", len(args))
	}
	return args[0], nil
}
