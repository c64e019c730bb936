package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// svg draws every row that has a target as a horizontal bar: the length is
// the figure, the tick is the target, green when met and red when not. The
// scale is logarithmic, so 0.6x and 20x fit one chart; each row is scaled
// against its own target, which sits at the middle of the track. A row
// that was skipped has its track and tick but no bar.
func svg(rows []row) string {
	const (
		labelW = 430
		trackW = 360
		rowH   = 26
		top    = 40
	)
	var judged []row
	for _, r := range rows {
		if r.Goal != nil {
			judged = append(judged, r)
		}
	}
	h := top + rowH*len(judged) + 30
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", labelW+trackW+110, h)
	fmt.Fprintf(&b, `<text x="10" y="20" font-size="14" font-weight="bold">idem bench: figures against targets (target tick in the middle, log scale)</text>`+"\n")
	for i, r := range judged {
		y := top + i*rowH
		// pos maps a value to the track: the target at the middle, a factor
		// of 10 either side to the ends.
		pos := func(v float64) float64 {
			x := 0.5 + math.Log10(max(v, 1e-9)/r.Goal.Value)/2
			return trackW * min(max(x, 0), 1)
		}
		good := r.Pass != nil && *r.Pass
		color := "#c0392b"
		if good {
			color = "#27ae60"
		}
		fmt.Fprintf(&b, `<text x="10" y="%d">%s</text>`+"\n", y+15, html.EscapeString(r.Operation))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="16" fill="#eee"/>`+"\n", labelW, y+3, trackW)
		fig := figure(r)
		if r.Skipped != "" {
			fig = "skipped"
		} else {
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="16" fill="%s"/>`+"\n", labelW, y+3, pos(r.Figure), color)
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#000" stroke-width="2"/>`+"\n",
			labelW+pos(r.Goal.Value), y, labelW+pos(r.Goal.Value), y+22)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s (%s)</text>`+"\n", labelW+trackW+8, y+15, html.EscapeString(fig), html.EscapeString(r.Goal.String()))
	}
	b.WriteString("</svg>\n")
	return b.String()
}
