package main

import (
	"fmt"
	"testing"
)

// BenchmarkReplay sends the same POST to idemhttp's replay path
// (handler=replay) and to a bare handler writing the same bytes
// (handler=bare), over HTTP/1.1 on loopback with kept-alive connections;
// the target is replay ≥ 0.5× the bare handler's requests/s.
func BenchmarkReplay(b *testing.B) {
	for _, g := range []int{1, 16} {
		b.Run(fmt.Sprintf("connections=%d", g), func(b *testing.B) {
			sub, base := replayTargets(benchEnv(b, 0), g)
			pairNamed(b, g, "handler=replay", "handler=bare", sub, base)
		})
	}
}
