package sim

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// Published returns the mean slowdown Amir et al. (2000) report from their
// simulation of 3,000 runs (by job, or the mean of the runs' means), for
// the policy of ours that plays the part (PVM's default placement is round
// robin), and whether they report one.
func Published(policy string, byRun bool) (float64, bool) {
	type pair struct{ byJob, byRun float64 }
	var p pair
	switch policy {
	case "roundrobin":
		p = pair{15.404, 14.334}
	case "epvm":
		p = pair{10.701, 9.795}
	case "mosix":
		p = pair{9.421, 8.557}
	case "emosix":
		p = pair{8.203, 7.479}
	default:
		return 0, false
	}
	if byRun {
		return p.byRun, true
	}
	return p.byJob, true
}

// WriteSVG draws the study's mean slowdowns by job, with their 95%
// intervals, beside the published ones, on a logarithmic axis (the
// policies differ by orders of magnitude under the heavy tails).
func WriteSVG(w io.Writer, r StudyResult) error {
	const (
		width, height       = 720, 380
		left, right, top    = 70, 20, 40
		bottom              = 70
		plotW, plotH        = width - left - right, height - top - bottom
		barGap, barsPerSlot = 8, 2
	)
	hi := 1.0
	for _, p := range r.Policies {
		hi = math.Max(hi, p.MeanSlowdown+p.CI95)
		if v, ok := Published(p.Policy, false); ok {
			hi = math.Max(hi, v)
		}
	}
	decades := math.Ceil(math.Log10(hi))
	if decades < 1 {
		decades = 1
	}
	y := func(v float64) float64 {
		v = math.Max(v, 1)
		return top + plotH - math.Log10(v)/decades*plotH
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14">Mean slowdown by job, %d runs (log scale): mosaic sim vs Amir et al. 2000</text>`+"\n", left, r.Config.Runs)
	for d := 0.0; d <= decades; d++ {
		yy := y(math.Pow(10, d))
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%g</text>`+"\n", left, width-right, yy, yy, left-6, yy+4, math.Pow(10, d))
	}
	slot := float64(plotW) / float64(len(r.Policies))
	barW := (slot - 3*barGap) / barsPerSlot
	for i, p := range r.Policies {
		x0 := float64(left) + float64(i)*slot + barGap
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#3b6ea5"/>`+"\n", x0, y(p.MeanSlowdown), barW, y(1)-y(p.MeanSlowdown))
		cx := x0 + barW/2
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n", cx, cx, y(p.MeanSlowdown-p.CI95), y(p.MeanSlowdown+p.CI95))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%.2f</text>`+"\n", cx, y(p.MeanSlowdown+p.CI95)-4, p.MeanSlowdown)
		if v, ok := Published(p.Policy, false); ok {
			x1 := x0 + barW + barGap
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#c98a2b"/>`+"\n", x1, y(v), barW, y(1)-y(v))
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%.2f</text>`+"\n", x1+barW/2, y(v)-4, v)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x0+barW+barGap/2, top+plotH+18, p.Policy)
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="#3b6ea5"/><text x="%d" y="%d">mosaic sim (95%% interval)</text>`+"\n", left, height-28, left+18, height-18)
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="#c98a2b"/><text x="%d" y="%d">published (simulation)</text>`+"\n", left+240, height-28, left+258, height-18)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
