package cacheaside

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestUserService_UndecodableEntryIsAMiss(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "hank")
		svc := NewUserService(repo, b.cache)
		for i, garbage := range []string{"{not json", `{"id":"seven"}`, `[1,2]`} {
			b.setRaw(userCacheKey(u.ID), garbage)
			got, err := svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
			require.Equal(t, "hank", got.Name)
			require.Equal(t, int64(i+1), svc.GetMetrics().DecodeErrors)
			raw, ok := b.raw(userCacheKey(u.ID))
			require.True(t, ok)
			require.Contains(t, raw, `"name":"hank"`, "the fill must overwrite the bad entry")
		}
	})
}
