package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
)

// palette colours the strategies in the order they ran.
var palette = []string{"#d62728", "#7f7f7f", "#1f77b4", "#17becf", "#bcbd22", "#ff7f0e", "#e377c2", "#2ca02c", "#9467bd", "#8c564b"}

// plotSVG draws database queries per second over time, one line per
// strategy, on a logarithmic axis (a strategy that never queries sits on
// the floor), as a standalone SVG document.
func plotSVG(title string, rows []result) []byte {
	const (
		width, height          = 960, 480
		left, right, top, bott = 70, 190, 40, 50
	)
	pw, ph := float64(width-left-right), float64(height-top-bott)
	maxT, maxY := 0.0, 1.0
	for _, r := range rows {
		maxT = max(maxT, float64(len(r.DBPerSecond))*float64(r.BucketMS)/1000)
		for _, v := range r.DBPerSecond {
			maxY = max(maxY, v)
		}
	}
	if maxT == 0 {
		maxT = 1
	}
	decades := math.Ceil(math.Log10(maxY))
	y := func(v float64) float64 {
		if v < 1 {
			v = 1
		}
		return float64(top) + ph - ph*math.Log10(v)/decades
	}
	x := func(t float64) float64 { return float64(left) + pw*t/maxT }

	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14">%s</text>`+"\n", left, html.EscapeString(title))
	if from, to, ok := outageSpan(rows); ok { // shade the black hole, under everything else
		from, to = min(from, maxT), min(to, maxT)
		fmt.Fprintf(&b, `<rect class="outage" x="%.1f" y="%d" width="%.1f" height="%.0f" fill="#f6dcdc"/>`+"\n", x(from), top, x(to)-x(from), ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#a33">Redis black-holed</text>`+"\n", (x(from)+x(to))/2, top+14)
	}
	for d := 0.0; d <= decades; d++ {
		yy := y(math.Pow(10, d))
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, yy, float64(left)+pw, yy)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, yy+4, humanize(math.Pow(10, d)))
	}
	step := niceStep(maxT)
	for t := 0.0; t <= maxT+1e-9; t += step {
		xx := x(t)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", xx, top, xx, float64(top)+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%gs</text>`+"\n", xx, float64(top)+ph+16, t)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">seconds into the measured phase</text>`+"\n", float64(left)+pw/2, height-10)
	fmt.Fprintf(&b, `<text transform="translate(16 %.1f) rotate(-90)" text-anchor="middle">database queries per second (log)</text>`+"\n", float64(top)+ph/2)
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`+"\n", left, top, pw, ph)
	for i, r := range rows {
		col := palette[i%len(palette)]
		dt := float64(r.BucketMS) / 1000
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.6" points="`, col)
		for j, v := range r.DBPerSecond {
			fmt.Fprintf(&b, "%.1f,%.1f ", x(float64(j)*dt), y(v))
			fmt.Fprintf(&b, "%.1f,%.1f ", x(float64(j+1)*dt), y(v))
		}
		b.WriteString(`"/>` + "\n")
		ly := top + 10 + i*20
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", width-right+12, ly, width-right+32, ly, col)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s (%d)</text>`+"\n", width-right+38, ly+4, html.EscapeString(r.Strategy), r.DBQueries)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#666">(total DB queries)</text>`+"\n", width-right+38, top+10+len(rows)*20+4)
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// outageSpan is the widest black hole of the rows, in seconds into the
// measured phase: each strategy ran its own, at nearly the same offsets.
func outageSpan(rows []result) (from, to float64, ok bool) {
	for _, r := range rows {
		o := r.Outage
		if o == nil || o.StartS < 0 || o.EndS < o.StartS {
			continue
		}
		if !ok {
			from, to, ok = o.StartS, o.EndS, true
		}
		from, to = min(from, o.StartS), max(to, o.EndS)
	}
	return from, to, ok
}

func niceStep(span float64) float64 {
	for _, s := range []float64{0.5, 1, 2, 5, 10, 30, 60, 120, 300} {
		if span/s <= 12 {
			return s
		}
	}
	return 600
}

func humanize(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return fmt.Sprintf("%g", v)
}
