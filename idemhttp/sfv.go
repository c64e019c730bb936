package idemhttp

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// Structured Field parsing (RFC 8941, and RFC 9651 for Dates and Display
// Strings), as much of it as an Idempotency-Key item needs: its string,
// and its parameters, which are checked and then ignored.

// parseSFString parses the sf-string at the start of v (which starts with
// a quote) and returns its value and what follows it.
func parseSFString(v string) (s, rest string, err error) {
	b := make([]byte, 0, len(v))
	for i := 1; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\':
			i++
			if i == len(v) || (v[i] != '"' && v[i] != '\\') {
				return "", "", fmt.Errorf("bad escape at byte %d (only \\\" and \\\\ are allowed)", i-1)
			}
			b = append(b, v[i])
		case c == '"':
			return string(b), v[i+1:], nil
		default:
			// Bytes the key may not hold are refused with the key's own
			// rules, which name them.
			b = append(b, c)
		}
	}
	return "", "", errors.New("quoted string is not closed")
}

// checkParams checks that rest is a valid list of Structured Field
// parameters: *( ";" *SP key [ "=" bare-item ] ).
func checkParams(rest string) error {
	for rest != "" {
		if rest[0] != ';' {
			return fmt.Errorf("unexpected %q after the quoted key", rest)
		}
		rest = rest[1:]
		for rest != "" && rest[0] == ' ' {
			rest = rest[1:]
		}
		n := paramKeyLen(rest)
		if n == 0 {
			return fmt.Errorf("parameter name missing or invalid at %q (lower-case letters, digits, _ - . *; starting with a letter or *)", rest)
		}
		name := rest[:n]
		rest = rest[n:]
		if rest == "" || rest[0] != '=' {
			continue // a parameter without a value is true
		}
		var err error
		if rest, err = skipBareItem(rest[1:]); err != nil {
			return fmt.Errorf("parameter %q: %v", name, err)
		}
	}
	return nil
}

// paramKeyLen returns the length of the parameter key at the start of s:
// ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" ).
func paramKeyLen(s string) int {
	if s == "" || !(isLower(s[0]) || s[0] == '*') {
		return 0
	}
	i := 1
	for i < len(s) && (isLower(s[i]) || isDigit(s[i]) || s[i] == '_' || s[i] == '-' || s[i] == '.' || s[i] == '*') {
		i++
	}
	return i
}

// skipBareItem checks the bare item at the start of s and returns what
// follows it.
func skipBareItem(s string) (string, error) {
	if s == "" {
		return "", errors.New("value missing after =")
	}
	switch c := s[0]; {
	case c == '-' || isDigit(c):
		return skipNumber(s)
	case c == '"':
		_, rest, err := parseSFString(s)
		if err != nil {
			return "", err
		}
		for i := 1; i < len(s)-len(rest)-1; i++ {
			if s[i] < 0x20 || s[i] > 0x7e {
				return "", fmt.Errorf("string holds byte 0x%02x", s[i])
			}
		}
		return rest, nil
	case c == '*' || isAlpha(c):
		i := 1
		for i < len(s) && (isTchar(s[i]) || s[i] == ':' || s[i] == '/') {
			i++
		}
		return s[i:], nil
	case c == ':':
		i := 1
		for i < len(s) && s[i] != ':' {
			if !isBase64(s[i]) {
				return "", fmt.Errorf("byte sequence holds %q", s[i])
			}
			i++
		}
		if i == len(s) {
			return "", errors.New("byte sequence is not closed")
		}
		return s[i+1:], nil
	case c == '?':
		if len(s) < 2 || (s[1] != '0' && s[1] != '1') {
			return "", errors.New("boolean is not ?0 or ?1")
		}
		return s[2:], nil
	case c == '@': // RFC 9651 Date: an integer
		if len(s) < 2 {
			return "", errors.New("date has no number")
		}
		rest, err := skipNumber(s[1:])
		if err == nil && len(s)-1-len(rest) > 0 && containsDot(s[1:len(s)-len(rest)]) {
			err = errors.New("date is not an integer")
		}
		return rest, err
	case c == '%': // RFC 9651 Display String
		return skipDisplayString(s)
	default:
		return "", fmt.Errorf("%q does not start a value", c)
	}
}

// skipNumber checks the sf-integer or sf-decimal at the start of s.
func skipNumber(s string) (string, error) {
	i := 0
	if s[0] == '-' {
		i++
	}
	if i == len(s) || !isDigit(s[i]) {
		return "", errors.New("number has no digits")
	}
	start, dot := i, -1
	for ; i < len(s); i++ {
		c := s[i]
		if isDigit(c) {
			continue
		}
		if c == '.' && dot < 0 {
			if i-start > 12 {
				return "", errors.New("decimal has more than 12 integer digits")
			}
			dot = i
			continue
		}
		break
	}
	switch {
	case dot < 0 && i-start > 15:
		return "", errors.New("integer has more than 15 digits")
	case dot >= 0 && dot == i-1:
		return "", errors.New("decimal ends with a dot")
	case dot >= 0 && i-dot-1 > 3:
		return "", errors.New("decimal has more than 3 fraction digits")
	}
	return s[i:], nil
}

// skipDisplayString checks the RFC 9651 Display String (%"...", with
// %xx escapes of lower-case hex) at the start of s.
func skipDisplayString(s string) (string, error) {
	if len(s) < 2 || s[1] != '"' {
		return "", errors.New(`display string does not start with %"`)
	}
	var b []byte
	for i := 2; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) || !isLowerHex(s[i+1]) || !isLowerHex(s[i+2]) {
				return "", errors.New("display string has a bad %xx escape")
			}
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
		case c == '"':
			if !utf8.Valid(b) {
				return "", errors.New("display string is not UTF-8")
			}
			return s[i+1:], nil
		case c < 0x20 || c > 0x7e:
			return "", fmt.Errorf("display string holds byte 0x%02x", c)
		default:
			b = append(b, c)
		}
	}
	return "", errors.New("display string is not closed")
}

func isLower(c byte) bool    { return 'a' <= c && c <= 'z' }
func isDigit(c byte) bool    { return '0' <= c && c <= '9' }
func isAlpha(c byte) bool    { return isLower(c) || ('A' <= c && c <= 'Z') }
func isLowerHex(c byte) bool { return isDigit(c) || ('a' <= c && c <= 'f') }
func isBase64(c byte) bool   { return isAlpha(c) || isDigit(c) || c == '+' || c == '/' || c == '=' }

func unhex(c byte) byte {
	if isDigit(c) {
		return c - '0'
	}
	return c - 'a' + 10
}

func containsDot(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			return true
		}
	}
	return false
}

// isTchar reports whether c is a tchar (RFC 9110 section 5.6.2).
func isTchar(c byte) bool {
	if isAlpha(c) || isDigit(c) {
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}
