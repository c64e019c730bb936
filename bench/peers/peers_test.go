package main

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestQuick runs every row, tiny, and checks each one measured both sides
// (or, without redis-server, that the Redis rows say why they were
// skipped). Timings are not judged.
func TestQuick(t *testing.T) {
	file := filepath.Join(t.TempDir(), "out.json")
	var table strings.Builder
	if err := mainErr([]string{"-quick", "-json", file}, &table, io.Discard); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Rows []row }
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	_, lookErr := exec.LookPath("redis-server")
	redisMissing := lookErr != nil
	specs := allSpecs()
	if len(doc.Rows) != len(specs) {
		t.Fatalf("%d rows, want %d", len(doc.Rows), len(specs))
	}
	for i, r := range doc.Rows {
		if r.ID != specs[i].id {
			t.Errorf("row %d is %q, want %q", i, r.ID, specs[i].id)
		}
		if !strings.Contains(table.String(), r.ID) {
			t.Errorf("the table has no row %q", r.ID)
		}
		switch {
		case r.Skipped != "":
			if !specs[i].redis || !redisMissing {
				t.Errorf("%s skipped: %s", r.ID, r.Skipped)
			}
		case r.Sub == nil || r.Base == nil || r.Sub.Ops == 0 || r.Base.Ops == 0 || r.Ratio <= 0:
			t.Errorf("%s measured nothing: %+v", r.ID, r)
		}
	}
}

func TestOnly(t *testing.T) {
	specs, err := selected("replay,redis-get-1")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range specs {
		ids = append(ids, s.id)
	}
	if got := strings.Join(ids, ","); got != "replay-idem,replay-idem-cache,replay-fiber-memory,replay-idem-redis,replay-fiber-redis,redis-get-1" {
		t.Errorf("selected %s", got)
	}
	if _, err := selected("nonsense"); err == nil {
		t.Error("-only nonsense: no error")
	}
}
