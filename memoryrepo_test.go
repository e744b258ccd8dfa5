package cacheaside

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestMemoryRepository(t *testing.T) {
	ctx := context.Background()
	r := NewMemoryRepository()
	u := &User{Name: "a", Email: "a@example.com"}
	require.NoError(t, r.CreateUser(ctx, u))
	require.Equal(t, 1, u.ID)
	require.False(t, u.CreateAt.IsZero(), "CreateAt is assigned")
	require.Equal(t, time.UTC, u.CreateAt.Location())

	fixed := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	v := &User{ID: 10, Name: "b", Email: "b@example.com", CreateAt: fixed}
	require.NoError(t, r.CreateUser(ctx, v))
	require.Equal(t, fixed, v.CreateAt, "a given CreateAt is kept")
	require.ErrorIs(t, r.CreateUser(ctx, &User{ID: 10, Name: "c"}), ErrUserExists)
	require.ErrorIs(t, r.CreateUser(ctx, nil), ErrInvalidUser)

	got, err := r.GetUser(ctx, 10)
	require.NoError(t, err)
	got.Name = "mutated"
	again, _ := r.GetUser(ctx, 10)
	require.Equal(t, "b", again.Name, "callers own their copies")

	upd := &User{ID: 10, Name: "b2", Email: "b@example.com"}
	require.NoError(t, r.UpdateUser(ctx, upd))
	require.Equal(t, fixed, upd.CreateAt, "UpdateUser keeps and reports CreateAt")
	require.ErrorIs(t, r.UpdateUser(ctx, &User{ID: 99}), ErrUserNotFound)
	require.ErrorIs(t, r.UpdateUser(ctx, nil), ErrInvalidUser)

	batch, err := r.GetUsers(ctx, []int{10, 2, 1})
	require.NoError(t, err)
	require.Equal(t, "b2", batch[0].Name)
	require.Nil(t, batch[1])
	require.Equal(t, "a", batch[2].Name)

	require.NoError(t, r.DeleteUser(ctx, 1))
	_, err = r.GetUser(ctx, 1)
	require.ErrorIs(t, err, ErrUserNotFound)
	require.ErrorIs(t, r.DeleteUser(ctx, 1), ErrUserNotFound)
	require.Equal(t, 1, r.Len())

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = r.GetUser(cctx, 10)
	require.True(t, errors.Is(err, context.Canceled))
}
