package latency

import (
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

func TestIndexUpperAgree(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 7, 8, 9, 15, 16, 1000, 123456789, time.Hour} {
		i := index(d)
		if up := upper(i); d > up {
			t.Fatalf("upper(index(%v)) = %v, want >= %v", d, up, d)
		}
		if i > 0 {
			if lo := upper(i - 1); d <= lo {
				t.Fatalf("upper(index(%v)-1) = %v, want < %v", d, lo, d)
			}
		}
	}
}

func TestQuantileWithinBucketError(t *testing.T) {
	var h Histogram
	r := rand.New(rand.NewPCG(1, 2))
	ds := make([]time.Duration, 20000)
	for i := range ds {
		ds[i] = time.Duration(r.ExpFloat64() * float64(200*time.Microsecond))
		h.Observe(ds[i])
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	for _, q := range []float64{0.5, 0.9, 0.99} {
		want := ds[int(q*float64(len(ds)))-1]
		got := h.Quantile(q)
		if got < want || float64(got) > float64(want)*1.13 {
			t.Fatalf("Quantile(%v) = %v, want within [%v, %v]", q, got, want, time.Duration(float64(want)*1.13))
		}
	}
	if h.Count() != int64(len(ds)) {
		t.Fatalf("Count() = %d, want %d", h.Count(), len(ds))
	}
}

func TestQuantileEmptyAndHuge(t *testing.T) {
	var h Histogram
	if got := h.Quantile(0.5); got != 0 {
		t.Fatalf("Quantile(0.5) of empty = %v, want 0", got)
	}
	h.Observe(1000 * time.Hour)
	h.Observe(-time.Second)
	if got := h.Quantile(1); got < time.Hour {
		t.Fatalf("Quantile(1) = %v, want the overflow bucket (> 1h)", got)
	}
	if got := h.Quantile(0); got != 0 {
		t.Fatalf("Quantile(0) = %v, want 0 (negative observed as zero)", got)
	}
}
