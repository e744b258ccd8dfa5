package metrics

import (
	"context"
	"fmt"
	"time"

	"github.com/cacheaside/cacheaside"
)

// Multi returns a cacheaside.Recorder that passes every call on to each of
// recorders, in order: a service takes one Recorder, and Multi lets it feed
// a PrometheusRecorder and an OTelRecorder at once. A recorder that is
// itself a Multi's is flattened into this one; with a single recorder,
// Multi returns it. Multi keeps its own copy of the list. It panics if a
// recorder is nil or none is given.
func Multi(recorders ...cacheaside.Recorder) cacheaside.Recorder {
	if len(recorders) == 0 {
		badOption("Multi", "", "at least one recorder is needed")
	}
	var m multi
	for i, r := range recorders {
		switch r := r.(type) {
		case nil:
			badOption("Multi", fmt.Sprintf("recorder %d", i), "the recorders must not be nil")
		case multi:
			m = append(m, r...)
		default:
			m = append(m, r)
		}
	}
	if len(m) == 1 {
		return m[0]
	}
	return m
}

// multi is the Recorder of Multi.
type multi []cacheaside.Recorder

// RecordRead passes the read on to every recorder.
func (m multi) RecordRead(ctx context.Context, result cacheaside.Result, d time.Duration) {
	for _, r := range m {
		r.RecordRead(ctx, result, d)
	}
}

// RecordLoad passes the load on to every recorder.
func (m multi) RecordLoad(ctx context.Context, result cacheaside.Result, d time.Duration) {
	for _, r := range m {
		r.RecordLoad(ctx, result, d)
	}
}

// RecordWrite passes the write on to every recorder.
func (m multi) RecordWrite(ctx context.Context, op string, result cacheaside.Result, d time.Duration) {
	for _, r := range m {
		r.RecordWrite(ctx, op, result, d)
	}
}
