package cacheaside

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSketch_Estimates: a count-min sketch never counts less than what
// was added, stays close for a key among thousands, and halving halves.
func TestSketch_Estimates(t *testing.T) {
	var s sketch
	s.init()
	for i := range 2000 {
		for range i % 7 {
			s.add("k" + strconv.Itoa(i))
		}
	}
	over := 0
	for i := range 2000 {
		got, want := s.estimate("k"+strconv.Itoa(i)), uint32(i%7)
		require.GreaterOrEqual(t, got, want)
		if got > want+2 {
			over++
		}
	}
	require.Less(t, over, 40, "estimates far above the count")
	for range 100 {
		s.add("hot")
	}
	before := s.estimate("hot")
	s.halve()
	require.InDelta(t, float64(before)/2, float64(s.estimate("hot")), 1)
}

// TestAdaptiveTTL_FollowsUse: an unseen key gets max, a key read and never
// written stays near max, a key written as often as it is read drops near
// min; the stored entry's TTL follows.
func TestAdaptiveTTL_FollowsUse(t *testing.T) {
	ad := newAdaptive(time.Second, time.Minute)
	require.Equal(t, time.Minute, ad.ttl("new"))
	for range 50 {
		ad.reads.add("read-mostly")
		ad.reads.add("written")
		ad.writes.add("written")
	}
	require.Equal(t, time.Minute, ad.ttl("read-mostly"))
	require.Less(t, ad.ttl("written"), 7*time.Second, "one write per read: about a tenth of the range")

	forEachBackend(t, func(t *testing.T, b backend) {
		if b.ttl == nil {
			t.Skip("the backend does not report TTLs")
		}
		ctx := context.Background()
		repo := newTestRepo()
		hot, churn := seedUser(t, repo, "hot"), seedUser(t, repo, "churn")
		svc := NewUserService(repo, b.fork(t), WithAdaptiveTTL(time.Second, time.Hour), WithJitter(0))
		t.Cleanup(func() { svc.Close() })
		for range 30 {
			_, err := svc.GetUser(ctx, hot.ID)
			require.NoError(t, err)
			_, err = svc.GetUser(ctx, churn.ID)
			require.NoError(t, err)
			require.NoError(t, svc.UpdateUser(ctx, &User{ID: churn.ID, Name: "churn", Email: churn.Email}))
		}
		_, err := svc.GetUser(ctx, churn.ID)
		require.NoError(t, err)
		hotTTL, churnTTL := b.ttl(userCacheKey(hot.ID)), b.ttl(userCacheKey(churn.ID))
		t.Logf("%s: a key only read lives %v, one written after every read %v", b.name, hotTTL.Round(time.Second), churnTTL.Round(time.Second))
		require.Greater(t, hotTTL, 50*time.Minute)
		require.Less(t, churnTTL, 10*time.Minute)
	})
}
