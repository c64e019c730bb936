package idemadmin_test

import (
	"math"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/idemadmin"
)

// Every valid filter survives Encode, the query string and ParseFilter
// exactly.
func TestFilterRoundTrip(t *testing.T) {
	for _, f := range []idemadmin.Filter{
		{},
		{Limit: idemadmin.DefaultLimit},
		{Prefix: "."},
		{Prefix: ".."},
		{Prefix: "../", State: "in-progress"},
		{Prefix: " tenant 42 / order ", Limit: 1},
		{Prefix: "café/東京/🙂", State: "completed"},
		{Prefix: "a&b=c?d#e%f+g;h", State: "failed"},
		{Prefix: "\xff\xfe not UTF-8"},
		{State: "corrupt", Limit: math.MaxInt},
		{Stale: true, OlderThan: time.Nanosecond},
		{OlderThan: 90 * time.Minute},
		{OlderThan: time.Hour + time.Nanosecond},
		{OlderThan: 7 * 24 * time.Hour},
		{OlderThan: math.MaxInt64},
		{Prefix: "t/", State: "in-progress", Stale: true, OlderThan: 10 * time.Minute, Limit: 101},
	} {
		q, err := url.ParseQuery(f.Encode().Encode())
		require.NoError(t, err, "%+v", f)
		got, err := idemadmin.ParseFilter(q)
		require.NoError(t, err, "%+v", f)
		assert.Equal(t, f, got, "query %s", f.Encode().Encode())
	}
}

func TestParseFilter(t *testing.T) {
	f, err := idemadmin.ParseFilter(url.Values{})
	require.NoError(t, err)
	assert.Equal(t, idemadmin.Filter{Limit: idemadmin.DefaultLimit}, f, "no limit in the query: the default")
	f, err = idemadmin.ParseFilter(url.Values{"stale": {"1"}, "unknown": {"x"}})
	require.NoError(t, err)
	assert.True(t, f.Stale)

	for query, want := range map[string]string{
		"stale=maybe":       `stale="maybe"`,
		"older-than=soon":   `older-than="soon"`,
		"older-than=10":     `older-than="10"`,
		"older-than=-1m":    "must not be negative",
		"limit=-3":          `limit="-3"`,
		"limit=ten":         `limit="ten"`,
		"state=done":        `unknown state "done"`,
		"state=In-Progress": `unknown state "In-Progress"`,
	} {
		q, err := url.ParseQuery(query)
		require.NoError(t, err)
		_, err = idemadmin.ParseFilter(q)
		assert.ErrorContains(t, err, want, query)
	}
	assert.ErrorContains(t, idemadmin.Filter{Limit: -1}.Check(), "limit must not be negative")
}
