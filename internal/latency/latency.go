// Package latency records durations in a lock-free log-linear histogram and
// answers quantile queries from it.
//
// Buckets double every subBuckets steps, so a quantile is accurate to within
// 1/subBuckets (12.5%) of its true value, for durations from 1ns to about
// 73 minutes; longer durations land in the last bucket.
package latency

import (
	"math/bits"
	"sync/atomic"
	"time"
)

const (
	subBits    = 3
	subBuckets = 1 << subBits
	maxExp     = 42 // 2^42 ns is about 73 minutes
	nBuckets   = (maxExp + 1) * subBuckets
)

// Histogram counts durations. The zero value is empty and ready to use; it is
// safe for concurrent use and must not be copied after first use.
type Histogram struct {
	counts [nBuckets]atomic.Int64
}

// Observe records d. Negative durations count as zero.
func (h *Histogram) Observe(d time.Duration) {
	h.counts[index(d)].Add(1)
}

// Count reports how many durations were recorded.
func (h *Histogram) Count() int64 {
	var n int64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}

// Quantile returns the duration below which a fraction q (0..1) of the
// recorded durations fall, as the upper bound of the bucket holding it. It
// returns 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	var snap [nBuckets]int64
	var total int64
	for i := range h.counts {
		snap[i] = h.counts[i].Load()
		total += snap[i]
	}
	if total == 0 {
		return 0
	}
	if q < 0 {
		q = 0
	}
	if q > 1 {
		q = 1
	}
	rank := int64(q*float64(total) + 0.5)
	if rank < 1 {
		rank = 1
	}
	var seen int64
	for i, c := range snap {
		seen += c
		if seen >= rank {
			return upper(i)
		}
	}
	return upper(nBuckets - 1)
}

// index maps a duration to its bucket. Durations below subBuckets ns get a
// bucket each; above that, each power of two is split into subBuckets parts.
func index(d time.Duration) int {
	if d < subBuckets {
		if d < 0 {
			return 0
		}
		return int(d)
	}
	v := uint64(d)
	exp := bits.Len64(v) - 1 // v in [2^exp, 2^(exp+1))
	if exp > maxExp {
		return nBuckets - 1
	}
	sub := int((v >> (uint(exp) - subBits)) & (subBuckets - 1))
	return (exp-subBits+1)*subBuckets + sub
}

// upper returns the largest duration that index maps to i.
func upper(i int) time.Duration {
	if i < subBuckets {
		return time.Duration(i)
	}
	exp := i/subBuckets + subBits - 1
	sub := uint64(i % subBuckets)
	base := uint64(1) << uint(exp)
	step := base >> subBits
	return time.Duration(base + (sub+1)*step - 1)
}
