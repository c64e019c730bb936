//go:build !race

package idem

import (
	"runtime"
	"testing"
)

// The codec allocates only what it returns: the encoded bytes, or the
// Record whose byte fields share the input. (Not under the race detector,
// whose sync.Pool drops pooled values on purpose.)
func TestCodecAllocations(t *testing.T) {
	r := benchRecord()
	data := encodeRecord(r)
	if n := testing.AllocsPerRun(1000, func() { encodeRecord(r) }); n > 1 {
		t.Errorf("encodeRecord: %v allocations, want 1", n)
	}
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := decodeRecord("req-1", data); err != nil {
			t.Fatal(err)
		}
	}); n > 1 {
		t.Errorf("decodeRecord: %v allocations, want 1", n)
	}
}

// A corrupt length is checked against the input before anything is
// allocated for it, in the known fields and in a later version's.
func TestCorruptLengthAllocatesNothing(t *testing.T) {
	good := v1Form(t, encodeRecord(benchRecord()))
	for _, data := range [][]byte{
		{0x9b, 0x01, 0x02, 0xc6, 0xff, 0xff, 0xff, 0xff, 0},
		append(append([]byte{0x9c}, good[1:]...), 0xc6, 0xff, 0xff, 0xff, 0xff, 0),
		append(append([]byte{0x9c}, good[1:]...), 0xdb, 0x7f, 0xff, 0xff, 0xff, 0),
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if _, err := decodeRecord("k", data); err == nil {
			t.Fatalf("%x decoded", data)
		}
		runtime.ReadMemStats(&after)
		if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
			t.Errorf("%x: %d bytes allocated", data, n)
		}
	}
}
