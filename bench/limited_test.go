package main

import "testing"

// TestScaleLimited runs the opt-in scale-limited workload on a small data
// set: under root with a cgroup v1 memory controller it measures both
// sides; elsewhere its one row says why it was skipped.
func TestScaleLimited(t *testing.T) {
	if testing.Short() {
		t.Skip("loads two data sets")
	}
	_, doc, _ := report(t, "-only", "scale-limited", "-records", "20000", "-duration", "50ms")
	if reason := cgroupUnavailable(); reason != "" {
		if len(doc.Rows) != 1 || doc.Rows[0].Skipped != reason {
			t.Fatalf("rows %+v, want one skipped with %q", doc.Rows, reason)
		}
		return
	}
	if len(doc.Rows) != 2 {
		t.Fatalf("%d rows, want 2", len(doc.Rows))
	}
	for _, r := range doc.Rows {
		if r.Subject == nil || r.Subject.Ops == 0 || r.Subject.P50 <= 0 {
			t.Errorf("row %q not measured: %+v", r.Operation, r)
		}
	}
	if r := doc.Rows[1]; r.Goal == nil || r.Pass == nil {
		t.Errorf("limited row %q has no verdict", r.Operation)
	}
}
