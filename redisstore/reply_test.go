package redisstore

import "testing"

// TestParseReply: the raw replies of SET NX GET and of the script, in
// RESP2 and RESP3, and what is not one of them.
func TestParseReply(t *testing.T) {
	for _, c := range []struct {
		raw  string
		kind int
		val  string
	}{
		{"$-1\r\n", replyNil, ""},
		{"_\r\n", replyNil, ""},
		{"$0\r\n\r\n", replyString, ""},
		{"$5\r\nhello\r\n", replyString, "hello"},
		{"$7\r\nhe\r\nllo\r\n", replyString, "he\r\nllo"},
		{":1\r\n", replyInt, "1"},
		{":0\r\n", replyInt, "0"},
		{"-NOSCRIPT No matching script.\r\n", replyOther, ""},
		{"-MOVED 3999 127.0.0.1:6381\r\n", replyOther, ""},
		{"!21\r\nSYNTAX invalid syntax\r\n", replyOther, ""},
		{"+OK\r\n", replyOther, ""},
		{"$5\r\nhell\r\n", replyOther, ""},
		{"$5\r\nhello", replyOther, ""},
		{"$x\r\nhello\r\n", replyOther, ""},
		{"$-2\r\n", replyOther, ""},
		{"$99999999999\r\n", replyOther, ""},
		{":\r\n", replyOther, ""},
		{"_\r\nx", replyOther, ""},
		{"", replyOther, ""},
		{"\r\n", replyOther, ""},
		{"$1\n", replyOther, ""},
	} {
		v, kind := parseReply([]byte(c.raw))
		if kind != c.kind || string(v) != c.val {
			t.Errorf("parseReply(%q) = %q, %d; want %q, %d", c.raw, v, kind, c.val, c.kind)
		}
	}
}
