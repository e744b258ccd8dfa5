package main

import (
	"fmt"
	"io"
)

// With -partition N, the first N instances of each Redis-backed strategy
// reach Redis through a fault-injection proxy of the strategy run's own
// (internal/faultproxy), healthy during the warm-up and black-holed for
// the whole measured phase: what a network partition between one service
// process and Redis looks like. Workers keep sending reads and writes to
// every instance; the database stays reachable from all of them. The row
// then tells the partitioned instances' operations from the healthy ones'.

// partitionResult is what -partition adds to a row.
type partitionResult struct {
	Instances   int         `json:"partitioned_instances"`
	Partitioned groupResult `json:"partitioned"`
	Healthy     groupResult `json:"healthy"`
}

// groupResult counts the operations of a group of instances (the
// partitioned ones, or the others) in the measured phase.
type groupResult struct {
	Reads       int64 `json:"reads"` // failed ones excluded, as in the row
	FailedReads int64 `json:"failed_reads"`
	StaleReads  int64 `json:"stale_reads"`
	// StaleAfterPartitionedWrite counts the stale reads whose newest write
	// acknowledged before they began came from a partitioned instance.
	StaleAfterPartitionedWrite int64   `json:"stale_reads_after_partitioned_write"`
	ReadP50us                  float64 `json:"read_p50_us"`
	ReadP99us                  float64 `json:"read_p99_us"`
	Writes                     int64   `json:"writes"` // failed ones excluded
	FailedWrites               int64   `json:"failed_writes"`
	WriteP50us                 float64 `json:"write_p50_us"`
	WriteP99us                 float64 `json:"write_p99_us"`
	WriteMaxUs                 float64 `json:"write_max_us"`
}

func (m summary) group() groupResult {
	return groupResult{
		Reads: m.reads, FailedReads: m.readErrs, StaleReads: m.stale, StaleAfterPartitionedWrite: m.staleByPartitioned,
		ReadP50us: pct(m.lat, 0.5), ReadP99us: pct(m.lat, 0.99),
		Writes: m.writes, FailedWrites: m.writeErrs,
		WriteP50us: pct(m.wlat, 0.5), WriteP99us: pct(m.wlat, 0.99), WriteMaxUs: pct(m.wlat, 1),
	}
}

// printPartitionTable prints what -partition adds to the rows.
func printPartitionTable(w io.Writer, rows []result) {
	n := 0
	for _, r := range rows {
		if r.Partition != nil {
			n = r.Partition.Instances
			break
		}
	}
	if n == 0 {
		return
	}
	fmt.Fprintf(w, "\npartition: the first %d instance(s) of each Redis-backed strategy black-holed from Redis for the whole measured phase, the others healthy;\n"+
		"\"after p. write\": stale reads whose newest acknowledged write came from a partitioned instance\n", n)
	fmt.Fprintf(w, "%-20s | %-62s | %s\n", "", "partitioned instances", "healthy instances")
	fmt.Fprintf(w, "%-20s | %7s %6s %6s %9s %7s %6s %8s %8s | %7s %6s %8s %7s %8s %8s %8s\n",
		"strategy", "reads", "failed", "stale", "read p99", "writes", "failed", "w p50", "w p99",
		"reads", "stale", "after p.", "writes", "w p50", "w p99", "w max")
	fmt.Fprintf(w, "%-20s | %7s %6s %6s %9s %7s %6s %8s %8s | %7s %6s %8s %7s %8s %8s %8s\n",
		"", "", "reads", "reads", "", "", "writes", "", "", "", "reads", "write", "", "", "", "")
	for _, r := range rows {
		p := r.Partition
		if p == nil {
			fmt.Fprintf(w, "%-20s | (no Redis: not partitioned)\n", r.Strategy)
			continue
		}
		a, b := p.Partitioned, p.Healthy
		fmt.Fprintf(w, "%-20s | %7d %6d %6d %9s %7d %6d %8s %8s | %7d %6d %8d %7d %8s %8s %8s\n",
			r.Strategy, a.Reads, a.FailedReads, a.StaleReads, us(a.ReadP99us), a.Writes, a.FailedWrites, us(a.WriteP50us), us(a.WriteP99us),
			b.Reads, b.StaleReads, b.StaleAfterPartitionedWrite, b.Writes, us(b.WriteP50us), us(b.WriteP99us), us(b.WriteMaxUs))
	}
}
