// Command bench measures idem against baselines run in the same process
// and prints a table of each workload's throughput, latency, allocations,
// ratio to its baseline and target.
//
//	go run ./bench                         # every workload, 1M records
//	go run ./bench -quick                  # small and short, for CI
//	go run ./bench -only get,get-cache -duration 5s
//	go run ./bench -records 10000000 -only scale
//	go run ./bench -records 10000000 -only memory
//	go run ./bench -records 10000000 -only scale-limited   # as root, cgroup v1
//	go run ./bench -json results.json -svg ratios.svg
//
// The same workloads run as standard benchmarks with
// go test -run '^$' -bench . ./bench.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strings"
	"text/tabwriter"
	"time"
)

func main() {
	if os.Getenv(childEnv) != "" {
		if err := runChild(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if err := mainErr(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func mainErr(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	records := fs.Int("records", 1_000_000, "records in the main data set (10000000 for the 10M scale row)")
	duration := fs.Duration("duration", time.Second, "timed work per side of each comparison")
	only := fs.String("only", "", "comma-separated workloads to run (default all): "+names())
	jsonOut := fs.String("json", "", "also write the results as JSON to this file (- for stdout)")
	svgOut := fs.String("svg", "", "also draw the figures against their targets as an SVG bar chart in this file")
	quick := fs.Bool("quick", false, "CI mode: 20k records and 200ms per side (timings are not meaningful)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process (not its children) to this file; narrow it with -only")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *quick {
		*records, *duration = 20_000, 200*time.Millisecond
	}
	if *records < 1000 {
		return fmt.Errorf("-records %d: need at least 1000", *records)
	}
	if *duration <= 0 {
		return fmt.Errorf("-duration %v: must be positive", *duration)
	}
	ws, err := selected(*only)
	if err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "idem-bench-")
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	e := &env{records: *records, duration: *duration, root: root, progress: stderr,
		fx: newFixtures(root, stderr), child: childRunner(exe, nil), command: childCommand(exe, nil)}
	defer e.fx.close()

	fmt.Fprintf(stderr, "idem bench: %s, %d CPUs, %s, %s records, %v per side\n",
		runtime.Version(), runtime.NumCPU(), cpuModel(), count(*records), *duration)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	var rows []row
	ctx := context.Background()
	for _, w := range ws {
		fmt.Fprintf(stderr, "%s: %s\n", w.name, w.desc)
		rs, err := w.rows(ctx, e)
		rows = append(rows, rs...)
		if err != nil {
			return fmt.Errorf("%s: %w", w.name, err)
		}
	}
	printTable(stdout, rows)
	if *jsonOut != "" {
		if err := writeJSON(*jsonOut, stdout, rows, e); err != nil {
			return err
		}
	}
	if *svgOut != "" {
		if err := os.WriteFile(*svgOut, []byte(svg(rows)), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func names() string {
	var n []string
	for _, w := range workloads() {
		n = append(n, w.name)
	}
	for _, w := range optInWorkloads {
		n = append(n, w.name+" (opt-in)")
	}
	return strings.Join(n, ",")
}

// childCommand returns a function that makes a command running exe (this
// program, or the test binary) as a child process with extra environment.
func childCommand(exe string, args []string) func(env ...string) *exec.Cmd {
	return func(env ...string) *exec.Cmd {
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stderr = os.Stderr
		return cmd
	}
}

// childRunner returns a function that runs exe (this program, or the test
// binary) as the memory child.
func childRunner(exe string, args []string) func(env ...string) ([]byte, error) {
	command := childCommand(exe, args)
	return func(env ...string) ([]byte, error) {
		out, err := command(env...).Output()
		if err != nil {
			return nil, fmt.Errorf("memory child: %w", err)
		}
		return out, nil
	}
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "operation\tops/s\tp50\tp99\tallocs/op\tbaseline ops/s\tbaseline p50\tbaseline allocs/op\tfigure\ttarget\tresult\tnote")
	for _, r := range rows {
		cells := make([]string, 0, 12)
		cells = append(cells, r.Operation)
		cells = append(cells, side(r.Subject)...)
		b := side(r.Baseline)
		cells = append(cells, b[0], b[1], b[3])
		fig, res, note := figure(r), verdict(r.Pass), r.Note
		if r.Skipped != "" {
			fig, res, note = "", "skipped", r.Skipped
		}
		cells = append(cells, fig, r.Goal.String(), res, note)
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	tw.Flush()
}

func side(r *result) []string {
	if r == nil {
		return []string{"", "", "", ""}
	}
	return []string{fmt.Sprintf("%.0f", r.OpsPerS), dur(r.P50), dur(r.P99), fmt.Sprintf("%.1f", r.AllocsOp)}
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

func figure(r row) string {
	switch r.Unit {
	case "x":
		return fmt.Sprintf("%.2fx", r.Figure)
	case "%":
		return fmt.Sprintf("%.1f%%", r.Figure)
	}
	return fmt.Sprintf("%.0f %s", r.Figure, r.Unit)
}

func verdict(p *bool) string {
	switch {
	case p == nil:
		return ""
	case *p:
		return "pass"
	}
	return "FAIL"
}

func writeJSON(path string, stdout io.Writer, rows []row, e *env) error {
	doc := struct {
		Go       string        `json:"go"`
		CPUs     int           `json:"cpus"`
		CPU      string        `json:"cpu"`
		Records  int           `json:"records"`
		Duration time.Duration `json:"duration_ns"`
		Rows     []row         `json:"rows"`
	}{runtime.Version(), runtime.NumCPU(), cpuModel(), e.records, e.duration, rows}
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
