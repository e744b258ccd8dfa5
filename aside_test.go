package cacheaside

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// productTTL is how long products are cached in these tests.
const productTTL = 30 * time.Minute

type product struct {
	SKU   string            `json:"sku"`
	Price int               `json:"price"`
	Attrs map[string]string `json:"attrs"`
}

func productLoader(catalog map[string]product, loads *atomic.Int64) LoadFunc[string, product] {
	return func(_ context.Context, sku string) (*product, error) {
		loads.Add(1)
		p, ok := catalog[sku]
		if !ok {
			return nil, fmt.Errorf("sku %s: %w", sku, ErrNotFound)
		}
		p.Attrs = map[string]string{}
		for k, v := range catalog[sku].Attrs {
			p.Attrs[k] = v
		}
		return &p, nil
	}
}

func TestAside_GenericEntity(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		var loads atomic.Int64
		catalog := map[string]product{"tea-1": {SKU: "tea-1", Price: 300, Attrs: map[string]string{"color": "red"}}}
		fc := newFaultCache(b.cache)
		a := NewAside(fc, "product", productLoader(catalog, &loads), WithTTL(productTTL), WithJitter(0))
		require.Equal(t, "product:tea-1", a.Key("tea-1"))

		p, err := a.Get(ctx, "tea-1")
		require.NoError(t, err)
		p.Attrs["color"] = "blue" // must not leak into the shared or cached value
		p2, err := a.Get(ctx, "tea-1")
		require.NoError(t, err)
		require.Equal(t, "red", p2.Attrs["color"])
		require.Equal(t, int64(1), loads.Load())
		ttl, _ := fc.ttlOf("product:tea-1")
		require.Equal(t, productTTL, ttl)

		_, err = a.Get(ctx, "nope")
		require.ErrorIs(t, err, ErrNotFound)
		_, err = a.Get(ctx, "nope")
		require.ErrorIs(t, err, ErrNotFound)
		require.Equal(t, int64(2), loads.Load(), "absence is cached")

		got, err := a.GetMany(ctx, []string{"nope", "tea-1", "tea-1"})
		require.NoError(t, err)
		require.Nil(t, got[0])
		require.Equal(t, 300, got[1].Price)
		got[1].Attrs["color"] = "green"
		require.Equal(t, "red", got[2].Attrs["color"], "duplicates get deep copies")

		catalog["tea-1"] = product{SKU: "tea-1", Price: 350}
		require.NoError(t, a.Invalidate(ctx, "tea-1"))
		p3, err := a.Get(ctx, "tea-1")
		require.NoError(t, err)
		require.Equal(t, 350, p3.Price)

		fc.failDel.Store(true)
		defer a.Close() // stops the retries of the delete that fails
		err = a.Invalidate(ctx, "tea-1")
		require.ErrorIs(t, err, errInjected)
		require.Equal(t, int64(1), a.Metrics().CacheInvalidationErrors)
	})
}

func TestAside_NilLoaderAndNilLoadResult(t *testing.T) {
	ctx := context.Background()
	a := NewAside[int, product](NewMemoryCache(), "p", nil)
	_, err := a.Get(ctx, 1)
	require.ErrorIs(t, err, ErrNotConfigured)
	_, err = a.GetMany(ctx, []int{1})
	require.ErrorIs(t, err, ErrNotConfigured)

	nilLoad := NewAside(NewMemoryCache(), "p", func(context.Context, int) (*product, error) { return nil, nil })
	_, err = nilLoad.Get(ctx, 1)
	require.ErrorIs(t, err, ErrNotFound, "(nil, nil) from a loader means not found")
}

func TestUserService_CacheFailureFallsBackToDB(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "frank")
		fc := newFaultCache(b.cache)
		var logs bytes.Buffer
		svc := NewUserService(repo, fc, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
		defer svc.Close()

		fc.failGet.Store(true)
		fc.failSet.Store(true)
		for range 3 {
			got, err := svc.GetUser(ctx, u.ID)
			require.NoError(t, err, "a cache failure must never fail a read")
			require.Equal(t, "frank", got.Name)
		}
		m := svc.GetMetrics()
		require.Equal(t, int64(3), repo.gets.Load())
		require.GreaterOrEqual(t, m.CacheErrors, int64(3))
		require.Zero(t, fc.sets.Load(), "a cache that just failed a read is not filled")
		require.Contains(t, logs.String(), "falling back to the repository")

		fc.failGet.Store(false) // reads miss, fills fail
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err, "a failed fill must never fail a read")
		require.Equal(t, "frank", got.Name)
		require.Equal(t, int64(1), svc.GetMetrics().CacheWriteErrors)

		fc.failDel.Store(true)
		fc.failGet.Store(false)
		fc.failSet.Store(false)
		u.Name = "frank2"
		require.NoError(t, svc.UpdateUser(ctx, u), "a failed invalidation must not fail the write")
		require.Equal(t, int64(1), svc.GetMetrics().CacheInvalidationErrors)
		require.Contains(t, logs.String(), "invalidation failed")
	})
}
