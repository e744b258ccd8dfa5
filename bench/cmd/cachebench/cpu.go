package main

import (
	"bufio"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// CPU accounting of a measured phase. On a machine that runs the
// instances, Redis and the database together and is busy throughout, the
// throughput column measures CPU time per operation as much as latency:
// a strategy that spends less CPU on an operation does more of them. The
// busy column says whether that is the case (a machine near 100% busy),
// and the CPU columns say what each operation cost: the whole machine's
// busy time (Linux only, from /proc/stat, so Redis and the database count
// when they run here) and this process's own (the instances and the
// harness), per 1,000 operations.

// cpuTimes is a sample of the CPU time used so far.
type cpuTimes struct {
	busy, total time.Duration // the machine's, every CPU summed; known only if machine
	machine     bool
	self        time.Duration // this process's user and system time
}

// clockTick is the unit of /proc/stat: USER_HZ, 100 on every Linux
// architecture Go supports.
const clockTick = 10 * time.Millisecond

// readCPU samples the machine's and this process's CPU time.
func readCPU() cpuTimes {
	var c cpuTimes
	c.self = selfCPU()
	if f, err := os.Open("/proc/stat"); err == nil {
		busy, total, err := parseProcStat(f)
		f.Close()
		if err == nil {
			c.busy, c.total, c.machine = busy, total, true
		}
	}
	return c
}

// parseProcStat reads the machine's busy and total CPU time from the
// aggregate "cpu" line of /proc/stat: busy is user, nice, system, irq,
// softirq and steal (guest time is already in user), total adds idle and
// iowait.
func parseProcStat(r io.Reader) (busy, total time.Duration, err error) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) == 0 || f[0] != "cpu" {
			continue
		}
		if len(f) < 8 {
			return 0, 0, errors.New("/proc/stat: short cpu line")
		}
		var v [8]int64 // user nice system idle iowait irq softirq steal
		for i := range v {
			if i+1 >= len(f) { // steal is missing before Linux 2.6.11
				break
			}
			n, err := strconv.ParseInt(f[i+1], 10, 64)
			if err != nil {
				return 0, 0, err
			}
			v[i] = n
		}
		b := v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
		return time.Duration(b) * clockTick, time.Duration(b+v[3]+v[4]) * clockTick, nil
	}
	if err := s.Err(); err != nil {
		return 0, 0, err
	}
	return 0, 0, errors.New("/proc/stat: no cpu line")
}

// setCPU sets r's CPU figures to what a phase of ops operations used
// between samples a and b; the machine's stay zero when unknown.
func (r *result) setCPU(a, b cpuTimes, ops int64) {
	if ops <= 0 {
		return
	}
	per1k := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) * 1000 / float64(ops) }
	r.SelfCPUMsPer1k = per1k(b.self - a.self)
	if a.machine && b.machine && b.total > a.total {
		r.CPUMsPer1k = per1k(b.busy - a.busy)
		r.BusyPct = 100 * float64(b.busy-a.busy) / float64(b.total-a.total)
	}
}
