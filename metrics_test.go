package cacheaside

import (
	"testing"
	"time"
)

func TestCounters_MovingAverage(t *testing.T) {
	var c counters
	c.observe(100 * time.Millisecond)
	c.observe(200 * time.Millisecond)
	m := c.snapshot(-1)
	if want := 110 * time.Millisecond; m.AvgResponseTime != want {
		t.Fatalf("AvgResponseTime = %v, want %v (0.9*100ms + 0.1*200ms)", m.AvgResponseTime, want)
	}
	if m.P50ResponseTime < 100*time.Millisecond || m.P99ResponseTime < 200*time.Millisecond {
		t.Fatalf("percentiles = %v/%v, want >= 100ms/200ms", m.P50ResponseTime, m.P99ResponseTime)
	}
}

func TestCounters_RatesAndLoadTime(t *testing.T) {
	var c counters
	if m := c.snapshot(5); m.HitRate != 0 || m.MissRate != 0 || m.LoadTime != 0 || m.CacheSize != 5 {
		t.Fatalf("empty snapshot = %+v, want zero rates and CacheSize 5", m)
	}
	c.requests.Add(10)
	c.hits.Add(7)
	c.misses.Add(1)
	c.shared.Add(2)
	c.recordLoad(10 * time.Millisecond)
	c.recordLoad(30 * time.Millisecond)
	m := c.snapshot(-1)
	if m.HitRate != 0.7 || m.MissRate != 0.3 {
		t.Fatalf("rates = %v/%v, want 0.7/0.3", m.HitRate, m.MissRate)
	}
	if m.LoadTime != 20*time.Millisecond || m.DatabaseLoads != 2 {
		t.Fatalf("LoadTime = %v over %d loads, want 20ms over 2", m.LoadTime, m.DatabaseLoads)
	}
}
