// Command peers measures idem beside the idempotency tool Go services
// most often compare it with, GoFiber's middleware/idempotency, and beside
// the hand-written Redis and Badger code it replaces. Every row is a
// ratio of a subject to its own baseline, both measured in alternating
// rounds in the same run, and says what each side guarantees.
//
//	cd bench/peers && go run .
//	go run . -only first,replay -duration 5s
//	go run . -quick            # everything, tiny: proves it runs
//	go run . -json results.json
//
// It is a module of its own so that the library's go.mod never requires
// Fiber.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

func main() {
	if err := mainErr(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		os.Exit(1)
	}
}

func mainErr(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("peers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	duration := fs.Duration("duration", 2*time.Second, "timed work per side of each row")
	only := fs.String("only", "", "comma-separated groups or row ids to run (default all): "+strings.Join(groupsAndIDs(), ","))
	jsonOut := fs.String("json", "", "also write the results as JSON to this file (- for stdout)")
	quick := fs.Bool("quick", false, "every row, tiny (50ms per side): proves it runs; timings mean nothing")
	clientKind := fs.String("client", "nethttp", "HTTP load generator for every HTTP row, both sides: nethttp or fasthttp")
	markdown := fs.Bool("markdown", false, "print the table as Markdown")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file (narrow it with -only)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *quick {
		*duration = 50 * time.Millisecond
	}
	if *duration <= 0 {
		return fmt.Errorf("-duration %v: must be positive", *duration)
	}
	if *clientKind != "nethttp" && *clientKind != "fasthttp" {
		return fmt.Errorf("-client %q: want nethttp or fasthttp", *clientKind)
	}
	specs, err := selected(*only)
	if err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "idem-peers-")
	if err != nil {
		return err
	}
	e := &env{root: root, duration: *duration, client: *clientKind, log: stderr, profiling: *cpuProfile != ""}
	defer func() {
		e.close()
		os.RemoveAll(root)
	}()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	fmt.Fprintf(stderr, "idem peers: %s, %d CPUs, %v per side, %s client\n", runtime.Version(), runtime.NumCPU(), *duration, *clientKind)
	var rows []row
	for _, s := range specs {
		fmt.Fprintf(stderr, "%s: %s\n", s.id, s.title)
		r, err := e.measure(s)
		if err != nil {
			return fmt.Errorf("%s: %w", s.id, err)
		}
		rows = append(rows, r)
	}
	if *markdown {
		printMarkdown(stdout, rows)
	} else {
		printTable(stdout, rows)
	}
	if *jsonOut != "" {
		return writeJSON(*jsonOut, stdout, rows, e)
	}
	return nil
}

// row is one comparison: a subject against its own baseline.
type row struct {
	ID        string   `json:"id"`
	Group     string   `json:"group"`
	Title     string   `json:"title"`
	Workers   int      `json:"workers"`
	Subject   string   `json:"subject"`
	Baseline  string   `json:"baseline"`
	SubjectG  promises `json:"subject_guarantees"`
	BaselineG promises `json:"baseline_guarantees"`
	Sub       *result  `json:"subject_result,omitempty"`
	Base      *result  `json:"baseline_result,omitempty"`
	// Ratio is the median over pairs of neighbouring rounds of the
	// subject's throughput over the baseline's; Low and High are the
	// quartiles, TotalRatio the ratio of the sides' whole throughputs.
	Ratio      float64 `json:"ratio,omitempty"`
	Low        float64 `json:"ratio_p25,omitempty"`
	High       float64 `json:"ratio_p75,omitempty"`
	TotalRatio float64 `json:"total_ratio,omitempty"`
	Pairs      int     `json:"pairs,omitempty"`
	Target     float64 `json:"target,omitempty"` // 0: none
	Pass       *bool   `json:"pass,omitempty"`
	Skipped    string  `json:"skipped,omitempty"`
	Note       string  `json:"note,omitempty"`
}

// spec describes a row before it is measured.
type spec struct {
	id, group, title  string
	workers           int
	subject, baseline string
	subjectG, baseG   promises
	target            float64
	redis             bool // needs a redis-server
	fsync             bool // depends on the disk's fsync: the row's note says what one costs
	make              func(e *env) (subject, baseline *target, err error)
}

// groups, in the order they run.
var groups = []string{"first", "replay", "redis", "embedded"}

func allSpecs() []spec {
	return slices.Concat(httpSpecs(), redisSpecs(), embeddedSpecs())
}

func groupsAndIDs() []string {
	out := slices.Clone(groups)
	for _, s := range allSpecs() {
		out = append(out, s.id)
	}
	return out
}

func selected(only string) ([]spec, error) {
	all := allSpecs()
	if only == "" {
		return all, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(only, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if !slices.Contains(groupsAndIDs(), n) {
			return nil, fmt.Errorf("-only: no group or row %q (have %s)", n, strings.Join(groupsAndIDs(), ","))
		}
		want[n] = true
	}
	var out []spec
	for _, s := range all {
		if want[s.group] || want[s.id] {
			out = append(out, s)
		}
	}
	return out, nil
}

// measure builds both sides of s, warms them up untimed, measures them in
// alternating rounds, checks them and closes them.
func (e *env) measure(s spec) (r row, err error) {
	r = row{ID: s.id, Group: s.group, Title: s.title, Workers: s.workers, Subject: s.subject, Baseline: s.baseline,
		SubjectG: s.subjectG, BaselineG: s.baseG, Target: s.target}
	if s.redis {
		if _, err := e.redisAddr(); err != nil {
			if errors.Is(err, errNoRedis) && os.Getenv("IDEM_REQUIRE_REDIS") != "1" {
				r.Skipped = err.Error()
				return r, nil
			}
			return r, err
		}
	}
	sub, base, err := s.make(e)
	if err != nil {
		return r, err
	}
	defer func() {
		for _, t := range []*target{sub, base} {
			if t != nil && t.close != nil {
				err = errors.Join(err, t.close())
			}
		}
	}()
	ts := []*target{sub, base}
	sub.label, base.label = s.id+"/subject", s.id+"/baseline"
	if _, err := run(ts, s.workers, e.warmup()); err != nil {
		return r, fmt.Errorf("warm-up: %w", err)
	}
	if s.redis {
		if err := e.resetRedisStats(); err != nil {
			return r, err
		}
	}
	res, err := run(ts, s.workers, e.duration)
	if err != nil {
		return r, err
	}
	if s.redis {
		r.Note = e.redisStats()
	}
	if s.fsync {
		r.Note = e.fsyncLatency()
	}
	for _, t := range ts {
		if t.check != nil {
			if err := t.check(); err != nil {
				return r, err
			}
		}
	}
	r.Sub, r.Base = &res[0], &res[1]
	pr := pairRatios(r.Sub.Rounds, r.Base.Rounds)
	r.Ratio, r.Low, r.High, r.Pairs = quantileOf(pr, 0.5), quantileOf(pr, 0.25), quantileOf(pr, 0.75), len(pr)
	r.TotalRatio = r.Sub.OpsPerS / r.Base.OpsPerS
	if s.target > 0 {
		pass := r.Ratio >= s.target
		r.Pass = &pass
	}
	return r, nil
}

func (e *env) warmup() time.Duration {
	return min(e.duration/4, 300*time.Millisecond)
}

func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "row\tsubject\tops/s\tp50\tp99\tbaseline\tops/s\tp50\tp99\tratio\tp25-p75\ttarget\tresult\tsubject guarantees\tbaseline guarantees")
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(cells(r), "\t"))
	}
	tw.Flush()
	fmt.Fprintln(w)
	printNotes(w, rows)
	fmt.Fprintln(w, ratioNote)
	fmt.Fprintln(w, legend)
}

func printNotes(w io.Writer, rows []row) {
	n := 0
	for _, r := range rows {
		if r.Note != "" {
			fmt.Fprintf(w, "- %s: %s\n", r.ID, r.Note)
			n++
		}
	}
	if n > 0 {
		fmt.Fprintln(w)
	}
}

const ratioNote = `ratio: the median, over pairs of neighbouring ~20ms rounds, of the subject's throughput over the
baseline's (p25-p75: the quartiles); the sides' whole throughputs are in the ops/s columns.`

func printMarkdown(w io.Writer, rows []row) {
	fmt.Fprintln(w, "| row | subject | ops/s | p50 | p99 | baseline | ops/s | p50 | p99 | ratio | p25-p75 | target | result | subject guarantees | baseline guarantees |")
	fmt.Fprintln(w, "|---|---|--:|--:|--:|---|--:|--:|--:|--:|--:|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s |\n", strings.Join(cells(r), " | "))
	}
	fmt.Fprintln(w)
	printNotes(w, rows)
	fmt.Fprintln(w, ratioNote)
	fmt.Fprintln(w)
	fmt.Fprintln(w, legend)
}

func cells(r row) []string {
	c := []string{fmt.Sprintf("%s (%d)", r.ID, r.Workers), r.Subject}
	c = append(c, side(r.Sub)...)
	c = append(c, r.Baseline)
	c = append(c, side(r.Base)...)
	ratio, spread, target, verdict := "", "", "", ""
	if r.Sub != nil {
		ratio = fmt.Sprintf("%.2fx", r.Ratio)
		spread = fmt.Sprintf("%.2f-%.2f", r.Low, r.High)
	}
	if r.Target > 0 {
		target = fmt.Sprintf(">= %.2gx", r.Target)
	}
	switch {
	case r.Skipped != "":
		verdict = "skipped: " + r.Skipped
	case r.Pass == nil:
	case *r.Pass:
		verdict = "pass"
	default:
		verdict = "MISS"
	}
	return append(c, ratio, spread, target, verdict, r.SubjectG.String(), r.BaselineG.String())
}

func side(r *result) []string {
	if r == nil {
		return []string{"", "", ""}
	}
	return []string{fmt.Sprintf("%.0f", r.OpsPerS), dur(r.P50), dur(r.P99)}
}

func dur(d time.Duration) string {
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	}
	return fmt.Sprintf("%.2fms", float64(d)/1e6)
}

func writeJSON(path string, stdout io.Writer, rows []row, e *env) error {
	doc := struct {
		Go       string        `json:"go"`
		CPUs     int           `json:"cpus"`
		Duration time.Duration `json:"duration_ns"`
		Client   string        `json:"client"`
		Redis    string        `json:"redis_version,omitempty"`
		Rows     []row         `json:"rows"`
	}{runtime.Version(), runtime.NumCPU(), e.duration, e.client, e.redisVersion, rows}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if path == "-" {
		_, err = stdout.Write(data)
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
