package idem

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestPhysicalExpiry(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) // the store's (injected) clock
	real := time.Unix(1000, 900_000_000)               // the real clock
	for _, tc := range []struct {
		remaining time.Duration
		want      time.Time
	}{
		{0, real.Add(time.Second)},
		{-time.Hour, real.Add(time.Second)},
		{time.Second, real.Add(2 * time.Second)},
		{24 * time.Hour, real.Add(24*time.Hour + time.Second)},
	} {
		got := physicalExpiry(now.Add(tc.remaining), now, real)
		assert.Equal(t, tc.want, got, "remaining %v", tc.remaining)
		assert.False(t, got.Before(real.Add(tc.remaining)), "never before the logical expiry")
	}
}
