package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strings"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
)

func init() {
	register(&command{
		name:    "import",
		args:    "[FILE]",
		summary: "read records written by idem export (standard input without FILE), keeping live records unless -overwrite",
		setup: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) error {
			sf := addStoreFlags(fs)
			overwrite := fs.Bool("overwrite", false, "replace live records stored under the same keys")
			return func(args []string, stdout, stderr io.Writer) error {
				if len(args) > 1 {
					return usageErr("want at most one FILE, got %q", args)
				}
				in := io.Reader(stdin)
				if len(args) == 1 && args[0] != "-" {
					f, err := os.Open(args[0])
					if err != nil {
						return err
					}
					defer f.Close()
					in = f
				}
				// Importing is how a store is restored or moved: a Badger
				// directory that does not exist yet is created.
				// Keys as long as any store allows: the exporting one may
				// have allowed more than the default.
				s, err := sf.open(&idem.Options{GCInterval: -1, MaxKeySize: idem.MaxKeySizeLimit, Logger: slog.New(slog.NewTextHandler(stderr, nil))})
				if err != nil {
					return err
				}
				defer s.Close()
				return importRecords(context.Background(), s, in, *overwrite, stdout, stderr)
			}
		},
	})
}

// maxLine bounds one JSON line: the largest response any store allows
// (MaxResponseSizeLimit), in base64, plus room for the other fields. A
// line the importing store then refuses as too large is one bad line; a
// longer line, which no export writes, ends the import.
const maxLine = idem.MaxResponseSizeLimit*4/3 + 64<<10

func importRecords(ctx context.Context, s *idem.Store, in io.Reader, overwrite bool, stdout, stderr io.Writer) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	var imported, existing, expired, bad int
	line := 0
	for sc.Scan() {
		line++
		if len(sc.Bytes()) == 0 {
			continue
		}
		var j idemadmin.Record
		err := decodeLine(sc.Bytes(), &j)
		var rec *idem.Record
		if err == nil {
			rec, err = j.ToRecord()
		}
		if err == nil && rec.Expired(s.Options().Now()) {
			expired++
			continue
		}
		if err == nil {
			err = s.Restore(ctx, rec, overwrite)
		}
		switch {
		case err == nil:
			imported++
		case errors.Is(err, idem.ErrExists):
			existing++
			fmt.Fprintf(stderr, "idem import: line %d: kept the live record stored under %q (-overwrite replaces it)\n", line, j.Key)
		default:
			bad++
			fmt.Fprintf(stderr, "idem import: line %d: %v\n", line, err)
		}
	}
	fmt.Fprintf(stdout, "imported %d records; kept %d existing; skipped %d expired; %d bad lines\n", imported, existing, expired, bad)
	if err := sc.Err(); err != nil {
		return fmt.Errorf("line %d: %w", line+1, err)
	}
	if bad > 0 {
		return fmt.Errorf("%d lines could not be imported (listed above)", bad)
	}
	return nil
}

// recordFields are the names of the fields of idemadmin.Record in JSON.
var recordFields = func() map[string]bool {
	names := map[string]bool{}
	t := reflect.TypeFor[idemadmin.Record]()
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			names[name] = true
		}
	}
	return names
}()

// decodeLine decodes line, one record as export writes it, into j. It
// refuses what encoding/json would let through and lose: an unknown
// field (a misspelling would lose what it holds), a field named twice or
// named in another case (json keeps one of them), and anything after the
// object, such as a second record.
func decodeLine(line []byte, j *idemadmin.Record) error {
	if err := checkFields(line); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(j); err != nil {
		return err
	}
	switch tok, err := dec.Token(); {
	case err == io.EOF:
		return nil
	case err != nil:
		return fmt.Errorf("after the record: %w (one record a line)", err)
	default:
		return fmt.Errorf("after the record: another value, beginning %v (one record a line)", tok)
	}
}

// checkFields returns an error naming a field of the JSON object in line
// that is there twice, or whose name is one of Record's in another case;
// what is not an object at all is left to the decoder.
func checkFields(line []byte) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		name, _ := tok.(string)
		if seen[name] {
			return fmt.Errorf("field %q twice", name)
		}
		seen[name] = true
		if !recordFields[name] {
			for f := range recordFields {
				if strings.EqualFold(name, f) {
					return fmt.Errorf("field %q: its name is %q", name, f)
				}
			}
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil
		}
	}
	return nil
}
