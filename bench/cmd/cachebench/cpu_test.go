package main

import (
	"math"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	stat := "cpu  100 5 50 800 20 3 2 10 7 0\ncpu0 50 2 25 400 10 1 1 5 3 0\nintr 12345\n"
	busy, total, err := parseProcStat(strings.NewReader(stat))
	if err != nil {
		t.Fatal(err)
	}
	// busy: user+nice+system+irq+softirq+steal, guest left out (in user).
	if want := time.Duration(100+5+50+3+2+10) * clockTick; busy != want {
		t.Errorf("busy = %v, want %v", busy, want)
	}
	if want := time.Duration(100+5+50+3+2+10+800+20) * clockTick; total != want {
		t.Errorf("total = %v, want %v", total, want)
	}
	for _, bad := range []string{"", "intr 1\n", "cpu 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\n"} {
		if _, _, err := parseProcStat(strings.NewReader(bad)); err == nil {
			t.Errorf("parseProcStat(%q) took it", bad)
		}
	}
}

func TestSetCPU(t *testing.T) {
	a := cpuTimes{busy: 10 * time.Second, total: 20 * time.Second, machine: true, self: time.Second}
	b := cpuTimes{busy: 13 * time.Second, total: 24 * time.Second, machine: true, self: 3 * time.Second}
	var r result
	r.setCPU(a, b, 2000)
	if r.CPUMsPer1k != 1500 || r.SelfCPUMsPer1k != 1000 || r.BusyPct != 75 {
		t.Errorf("setCPU: %v, %v, %v; want 1500 ms, 1000 ms, 75%%", r.CPUMsPer1k, r.SelfCPUMsPer1k, r.BusyPct)
	}
	a.machine = false
	r = result{}
	if r.setCPU(a, b, 2000); r.CPUMsPer1k != 0 || r.BusyPct != 0 || r.SelfCPUMsPer1k != 1000 {
		t.Errorf("without machine figures: %v, %v, %v", r.CPUMsPer1k, r.SelfCPUMsPer1k, r.BusyPct)
	}
	r = result{}
	if r.setCPU(a, b, 0); r.CPUMsPer1k != 0 || r.BusyPct != 0 || r.SelfCPUMsPer1k != 0 {
		t.Errorf("no operations: %v, %v, %v", r.CPUMsPer1k, r.SelfCPUMsPer1k, r.BusyPct)
	}
}

// TestReadCPU checks that spinning shows in this process's CPU time and,
// on Linux, in the machine's.
func TestReadCPU(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("this process's CPU time is read on unix only")
	}
	a := readCPU()
	x := 0.0
	deadline := time.Now().Add(10 * time.Second)
	for readCPU().self-a.self < 50*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("10 s of spinning added %v of CPU time (%v)", readCPU().self-a.self, x)
		}
		for range 10000 {
			x += math.Sqrt(x + 1)
		}
	}
	b := readCPU()
	if runtime.GOOS == "linux" && (!a.machine || !b.machine || b.busy <= a.busy || b.total <= a.total) {
		t.Errorf("machine figures did not advance: %+v then %+v", a, b)
	}
}
