package idemhttp_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/idemdb/idem/idemhttp"
)

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{`"8e03978e-40d5-43e8-bc93-6894a57f9324"`, "abc", ` "a\"b\\c" `, `"a";p=1`, "a,b", "", `"`, "caf\xc3\xa9", strings.Repeat("k", 256)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		key, err := idemhttp.ParseKey(v)
		if err != nil {
			if key != "" {
				t.Fatalf("ParseKey(%q) returned %q with error %v", v, key, err)
			}
			return
		}
		if len(key) == 0 || len(key) > idemhttp.MaxKeyLen {
			t.Fatalf("ParseKey(%q) = %q: length %d", v, key, len(key))
		}
		for i := 0; i < len(key); i++ {
			if key[i] < 0x21 || key[i] > 0x7e {
				t.Fatalf("ParseKey(%q) = %q: byte 0x%02x", v, key, key[i])
			}
		}
		// The quoted form of any accepted key parses back to it.
		q := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`
		if k2, err := idemhttp.ParseKey(q); err != nil || k2 != key {
			t.Fatalf("ParseKey(%q) = %q, %v; want %q", q, k2, err, key)
		}
		// So does the bare form, when the key can be written bare.
		if !strings.ContainsAny(key, `",`) {
			if k2, err := idemhttp.ParseKey(key); err != nil || k2 != key {
				t.Fatalf("ParseKey(%q) = %q, %v; want itself", key, k2, err)
			}
		}
	})
}

func FuzzFingerprint(f *testing.F) {
	f.Add("POST", "/payments", []byte(`{"amount":5000,"currency":"USD","tags":["a","b"],"x":{"z":1,"y":2.50}}`))
	f.Add("PATCH", "/a", []byte("not json"))
	f.Add("POST", "/", []byte(`"\u00e9\u003c"`))
	f.Add("POST", "/", []byte(`{"a":1,"a":2}`))
	f.Fuzz(func(t *testing.T, method, route string, body []byte) {
		raw := idemhttp.Fingerprint(method, route, body, false)
		canon := idemhttp.Fingerprint(method, route, body, true)
		if len(raw) != 32 || len(canon) != 32 {
			t.Fatalf("digest lengths %d, %d", len(raw), len(canon))
		}
		if !bytes.Equal(raw, idemhttp.Fingerprint(method, route, bytes.Clone(body), false)) {
			t.Fatal("not deterministic")
		}
		// The parts cannot run into each other.
		if bytes.Equal(raw, idemhttp.Fingerprint(method+"x", route, body, false)) ||
			bytes.Equal(raw, idemhttp.Fingerprint(method, route+"x", body, false)) ||
			bytes.Equal(raw, idemhttp.Fingerprint(method, route, append(bytes.Clone(body), 'x'), false)) {
			t.Fatal("a changed part gave the same fingerprint")
		}
		if len(route) > 0 && bytes.Equal(raw, idemhttp.Fingerprint(method+route[:1], route[1:], body, false)) {
			t.Fatal("moving a byte between method and route gave the same fingerprint")
		}
		if !json.Valid(body) {
			if !bytes.Equal(raw, canon) {
				t.Fatal("invalid JSON is hashed as it is")
			}
			return
		}
		// Whitespace does not count under canonical JSON.
		var indented bytes.Buffer
		if err := json.Indent(&indented, body, " ", "\t"); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(canon, idemhttp.Fingerprint(method, route, indented.Bytes(), true)) {
			t.Fatalf("indenting %q changed the canonical fingerprint", body)
		}
		// Nor does key order: a compacted re-encoding through a map is the
		// same request.
		var v any
		if json.Unmarshal(body, &v) == nil {
			d := json.NewDecoder(bytes.NewReader(body))
			d.UseNumber()
			var n any
			if d.Decode(&n) == nil {
				re, err := json.Marshal(n)
				if err == nil && !bytes.Equal(canon, idemhttp.Fingerprint(method, route, re, true)) {
					t.Fatalf("re-encoding %q as %q changed the canonical fingerprint", body, re)
				}
			}
		}
	})
}
