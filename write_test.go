package cacheaside

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// gatedRepo holds every UpdateUser in the middle, before it changes the
// row, until the test lets it go: the test looks at the cache while a
// write is in progress.
type gatedRepo struct {
	*testRepo
	entered chan struct{}
	release chan struct{}
}

func newGatedRepo() *gatedRepo {
	return &gatedRepo{testRepo: newTestRepo(), entered: make(chan struct{}), release: make(chan struct{})}
}

func (r *gatedRepo) UpdateUser(ctx context.Context, u *User) error {
	r.entered <- struct{}{}
	<-r.release
	return r.testRepo.UpdateUser(ctx, u)
}

// midWrite starts an update of u to name on svc, runs during while the
// update is held before the row changes, and returns once it finished.
func midWrite(t *testing.T, svc *UserService, repo *gatedRepo, u *User, name string, during func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- svc.UpdateUser(context.Background(), &User{ID: u.ID, Name: name, Email: u.Email}) }()
	select {
	case <-repo.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the update never reached the repository")
	}
	during()
	close(repo.release)
	require.NoError(t, <-done)
	repo.release = make(chan struct{})
}

// TestWrite_IntentOnlyWhereMembersMayBe: a writer without a local tier
// places a write-intent marker until an announcement tells it the fleet has
// no members; from then on, for a lease, its writes cost one round trip
// after the source changed and leave the old value in place meanwhile. As
// soon as a member is counted, its writes carry the marker again.
func TestWrite_IntentOnlyWhereMembersMayBe(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newGatedRepo()
		u := seedUser(t, repo, "v0")
		w := NewUserService(repo, b.fork(t), WithRelatedKeys(nil))
		t.Cleanup(func() { w.Close() })
		key := userCacheKey(u.ID)
		held := func() string {
			raw, _ := b.raw(key)
			return raw
		}

		_, err := w.GetUser(ctx, u.ID)
		require.NoError(t, err)
		midWrite(t, w, repo, u, "v1", func() {
			require.True(t, strings.HasPrefix(held(), writingPrefix), "the first write knows nothing of the fleet: it must place its intent, found %q", held())
		})

		_, err = w.GetUser(ctx, u.ID)
		require.NoError(t, err)
		midWrite(t, w, repo, u, "v2", func() {
			require.Contains(t, held(), `"v1"`, "with no members counted a lease ago, the old value stays until the write is done")
		})
		got, err := w.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "v2", got.Name)

		m := newTierInstance(t, b, repo)
		serving(t, m)
		require.NoError(t, bareUpdate(ctx, w, repo, u, "v3")) // counts m
		_, err = w.GetUser(ctx, u.ID)
		require.NoError(t, err)
		midWrite(t, w, repo, u, "v4", func() {
			require.True(t, strings.HasPrefix(held(), writingPrefix), "a writer that counted a member must place its intent, found %q", held())
		})
	})
}

// TestWrite_JoinerFillsNothingDuringItsGrace: a member that joins while a
// write without a marker is in progress finds the old value in the shared
// cache, and must not keep it in memory, or it could serve it after the
// write's new value was seen elsewhere. It fills nothing for its grace;
// with no grace, the same reads fill its tier, which shows what the grace
// keeps out.
func TestWrite_JoinerFillsNothingDuringItsGrace(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grace time.Duration
	}{{"grace", time.Minute}, {"no grace", time.Nanosecond}} {
		t.Run(tc.name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, b backend) {
				ctx := context.Background()
				repo := newGatedRepo()
				u := seedUser(t, repo, "v0")
				w := NewUserService(repo, b.fork(t), WithRelatedKeys(nil))
				t.Cleanup(func() { w.Close() })
				// A write that counts no members, then the row cached.
				require.NoError(t, bareUpdate(ctx, w, repo, u, "v1"))
				_, err := w.GetUser(ctx, u.ID)
				require.NoError(t, err)

				var joiner tierInstance
				midWrite(t, w, repo, u, "v2", func() {
					raw, _ := b.raw(userCacheKey(u.ID))
					require.Contains(t, raw, `"v1"`, "the write must be one without a marker")
					joiner = newTierInstance(t, b, repo, withJoinGrace(tc.grace))
					require.Eventually(t, func() bool {
						return strings.HasPrefix(joiner.svc.GetMetrics().Membership, "joining") ||
							joiner.svc.GetMetrics().Membership == "serving"
					}, 10*time.Second, 5*time.Millisecond)
					for range 3 {
						got, err := joiner.svc.GetUser(ctx, u.ID)
						require.NoError(t, err)
						require.Equal(t, "v1", got.Name)
					}
				})
				local := joiner.svc.GetMetrics().LocalHits
				if tc.grace == time.Minute {
					require.Zero(t, local, "a joiner in its grace served from memory")
					got, err := joiner.svc.GetUser(ctx, u.ID)
					require.NoError(t, err)
					require.Equal(t, "v2", got.Name)
				} else {
					require.Positive(t, local, "without a grace the joiner should have kept the old value: the test has no teeth")
				}
			})
		})
	}
}

// bareUpdate runs an update of u on w with the gate open.
func bareUpdate(ctx context.Context, w *UserService, repo *gatedRepo, u *User, name string) error {
	go func() { <-repo.entered; repo.release <- struct{}{} }()
	return w.UpdateUser(ctx, &User{ID: u.ID, Name: name, Email: u.Email})
}
