package idemhttp_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/idemhttp"
)

func TestParseKey(t *testing.T) {
	for _, tc := range []struct{ value, key string }{
		{`abc`, "abc"},
		{`"abc"`, "abc"},
		{` "abc" `, "abc"},
		{`"a\"b\\c"`, `a"b\c`},
		// Structured Field parameters are checked and ignored.
		{`"k";v=1`, "k"},
		{`"k";v`, "k"},
		{`"k";  a=1;b=-2;c=123456789012345`, "k"},
		{`"k";d=1.5;e=-123456789012.123`, "k"},
		{`"k";s="with \"escapes\" \\ and spaces"`, "k"},
		{`"k";t=*tok;u=Abc:/!#`, "k"},
		{`"k";b=:cHJldGVuZA==:;e=::`, "k"},
		{`"k";yes=?1;no=?0`, "k"},
		{`"k";at=@1659578233;ds=%"caf%c3%a9"`, "k"},
		{`"k";*x.y_z-1=1`, "k"},
		// A bare token is taken whole.
		{`k;v=1`, "k;v=1"},
	} {
		key, err := idemhttp.ParseKey(tc.value)
		require.NoError(t, err, tc.value)
		require.Equal(t, tc.key, key, tc.value)
	}
	for _, tc := range []struct{ value, why string }{
		{`"k";`, "parameter name"},
		{`"k";V=1`, "parameter name"},
		{`"k";1a=1`, "parameter name"},
		{`"k";v=`, "value missing"},
		{`"k";v=1;`, "parameter name"},
		{`"k" ;v=1`, "unexpected"},
		{`"k"x`, "unexpected"},
		{`"k",`, "unexpected"},
		{`"k";v="open`, "not closed"},
		{`"k";v="a\x"`, "bad escape"},
		{"\"k\";v=\"tab\there\"", "0x09"},
		{`"k";v=1234567890123456`, "15 digits"},
		{`"k";v=1.2345`, "3 fraction"},
		{`"k";v=1.`, "ends with a dot"},
		{`"k";v=1234567890123.1`, "12 integer"},
		{`"k";v=-`, "no digits"},
		{`"k";v=?2`, "boolean"},
		{`"k";v=:abc`, "not closed"},
		{`"k";v=:a$c:`, "byte sequence"},
		{`"k";v=@1.5`, "not an integer"},
		{`"k";v=%"%C3%A9"`, "escape"},
		{`"k";v=%"%ff"`, "UTF-8"},
		{`"k";v=(a b)`, "does not start a value"},
		{`"k";v=1 ;w=2`, "unexpected"},
	} {
		_, err := idemhttp.ParseKey(tc.value)
		require.Error(t, err, tc.value)
		require.True(t, errors.Is(err, idemhttp.ErrMalformedKey), tc.value)
		require.ErrorContains(t, err, tc.why, tc.value)
	}
}

func TestFormatKey(t *testing.T) {
	require.Equal(t, `"abc"`, idemhttp.FormatKey("abc"))
	require.Equal(t, `"a\"b\\c"`, idemhttp.FormatKey(`a"b\c`))
	for _, k := range []string{"abc", `a"b\c`, `"`, `;v=1`, "8e03978e-40d5-43e8-bc93-6894a57f9324"} {
		got, err := idemhttp.ParseKey(idemhttp.FormatKey(k))
		require.NoError(t, err)
		require.Equal(t, k, got)
	}
}
