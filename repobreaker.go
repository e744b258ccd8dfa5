package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sony/gobreaker/v2"
)

// ErrRepositoryUnavailable reports a load that was not sent to the
// repository because its circuit breaker is open: the repository failed
// several times in a row and is being given time to recover (see
// WithRepositoryBreaker).
var ErrRepositoryUnavailable = errors.New("cacheaside: repository unavailable")

// A circuit breaker on the repository's reads keeps a failing database from
// being hammered by every miss: once it is open, loads fail at once (or are
// answered by fail-safe) until, after the cooldown, one probe is let
// through. A missing value is an answer, not a failure, and a loader that
// panics is a bug in that loader, not an outage: neither counts.

type repoBreaker = gobreaker.TwoStepCircuitBreaker[struct{}]

func newRepoBreaker(o options, m *counters) *repoBreaker {
	st := breakerSettings("repository", o.repoBreaker, o.logger, func(_, to gobreaker.State) {
		m.repoBreakerState.Store(int32(to))
		if to == gobreaker.StateOpen {
			m.repoBreakerOpens.Add(1)
		}
	})
	return gobreaker.NewTwoStepCircuitBreaker[struct{}](st)
}

// callRepo runs one repository read through the breaker.
func (a *Aside[K, V]) callRepo(ctx context.Context, read func() error) error {
	done, err := a.rb.Allow()
	if err != nil {
		a.m.repoRejected.Add(1)
		if a.recording {
			a.o.recorder.RecordLoad(ctx, ResultRejected, 0)
		}
		return fmt.Errorf("%w: circuit breaker open", ErrRepositoryUnavailable)
	}
	reported := false
	defer func() {
		if !reported { // read panicked
			done(errCallerGone)
		}
	}()
	start := time.Now()
	err = read()
	d := time.Since(start)
	a.m.recordLoad(d)
	reported = true
	if a.recording {
		res := ResultOK
		switch {
		case errors.Is(err, ErrNotFound), errors.Is(err, a.notFound):
			res = ResultNotFound
		case err != nil:
			res = ResultError
		}
		a.o.recorder.RecordLoad(ctx, res, d)
	}
	switch {
	case err == nil, errors.Is(err, ErrNotFound), errors.Is(err, a.notFound):
		done(nil)
	case errors.As(err, new(*PanicError)):
		done(errCallerGone)
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		done(errCallerGone)
	default:
		a.m.dbErrs.Add(1)
		done(err)
	}
	return err
}

// loadOne reads id from the source through the breaker.
func (a *Aside[K, V]) loadOne(ctx context.Context, id K) (v *V, err error) {
	err = a.callRepo(ctx, func() error {
		v, err = a.load(ctx, id)
		return err
	})
	return v, err
}
