package idemhttp

import (
	"bytes"
	"strings"
	"testing"
)

// canonicalizeJSONTree is the canonical form as it was first defined,
// encoding/json's decode (with UseNumber) into any and Marshal:
// canonicalizeJSON must give the same bytes, since the fingerprints of
// stored records depend on them.

var canonicalSeeds = []string{
	`{"amount":5000,"currency":"USD","tags":["a","b"],"x":{"z":1,"y":2.50}}`,
	`{"b":1,"a":{"d":[1,{"z":0,"y":[]}],"c":{}},"a":2}`,
	`{"a":1,"a":2,"\u0061":3}`,
	`"\u00e9\u003c<>&\u2028\u2029 \b\f\n\r\t\u0001\u001f\/\\\""`,
	"\"caf\xc3\xa9 bad \xff\xfe \xed\xa0\x80 end\"",
	`"\ud83d\ude00 \ud83d \ude00 \ud83dx \ud800\ud800"`,
	`{"\ud83d":1,"\ufffd":2}`,
	`[-0,0.5e10,1E+2,-1.25e-3,123456789012345678901234567890]`,
	`[true,false,null,"",{},[]]`,
	`[{ },{"a":{ }},[ ],{"":0}]`,
	" \t\r\n {\"k\" : [ 1 , 2 ] } \n",
	`{"<":1,">":2,"&":3,"é":4,"e":5}`,
	`01`, `1 2`, `{"a":1}]`, `{"a":1,}`, `[1,]`, `-`, `1.`, `1e`, `.5`, `tru`, `nul`, `"\x"`,
	"\"tab\there\"", `{"a"}`, `{1:2}`, `[`, `{`, `"`, ``, ` `, "\xef\xbb\xbf{}", `{}x`, `"\u12"`, `NaN`,
}

func TestCanonicalJSONMatchesEncodingJSON(t *testing.T) {
	for _, s := range canonicalSeeds {
		requireSameCanonical(t, []byte(s))
	}
	// encoding/json refuses a body nested deeper than 10000.
	for _, depth := range []int{9999, 10000, 10001} {
		for _, open := range []string{"[", `{"a":`} {
			close := map[string]string{"[": "]", `{"a":`: "}"}[open]
			body := strings.Repeat(open, depth) + "1" + strings.Repeat(close, depth)
			requireSameCanonical(t, []byte(body))
		}
	}
}

func requireSameCanonical(t testing.TB, body []byte) {
	t.Helper()
	want, wantOK := canonicalizeJSONTree(body)
	got, gotOK := canonicalizeJSON(body)
	if wantOK != gotOK || !bytes.Equal(want, got) {
		t.Fatalf("canonical form of %q:\n got %v %q\nwant %v %q", body, gotOK, got, wantOK, want)
	}
}

func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range canonicalSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		requireSameCanonical(t, body)
	})
}
