package cacheaside

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// flakyAcks is the memory cache's bus whose first fail acknowledgement
// sends fail, as over a connection that was reset.
type flakyAcks struct {
	*MemoryCache
	fail  atomic.Int64
	sends atomic.Int64
}

func (f *flakyAcks) busAck(ctx context.Context, writes []string, member string) error {
	f.sends.Add(1)
	if f.fail.Add(-1) >= 0 {
		return errors.New("connection reset by peer")
	}
	return f.MemoryCache.busAck(ctx, writes, member)
}

// TestBus_FailedAcksAreRetried: an acknowledgement whose send fails is sent
// again, so that the writer waiting for it is not left to wait for the
// member's lease, which the member keeps renewing; past maxAckTries sends
// it is given up.
func TestBus_FailedAcksAreRetried(t *testing.T) {
	for _, tc := range []struct {
		fails     int64
		delivered bool
	}{{fails: maxAckTries - 1, delivered: true}, {fails: maxAckTries, delivered: false}} {
		tr := &flakyAcks{MemoryCache: NewMemoryCache()}
		tr.fail.Store(tc.fails)
		var m counters
		b := newBus(tr, true, time.Second, newOptions(time.Minute, nil), &m, nil)
		var bg background
		bg.Go(b.send)
		b.queueAck("w.p")
		got, err := tr.busAwaitAcks(context.Background(), "w.p", time.Second)
		bg.close()
		require.NoError(t, err)
		if tc.delivered {
			require.Equal(t, []string{b.member}, got, "after %d failed sends", tc.fails)
			require.Equal(t, int64(1), m.busAcks.Load())
		} else {
			require.Empty(t, got)
			require.Zero(t, m.busAcks.Load())
		}
		require.Equal(t, int64(min(tc.fails+1, maxAckTries)), tr.sends.Load())
	}
}
