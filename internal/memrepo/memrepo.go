// Package memrepo is a concurrency-safe in-memory table of values keyed by a
// positive integer ID, the storage behind the root package's
// MemoryRepository. Values are stored and returned by value, so callers own
// what they get.
package memrepo

import "sync"

// Store is a table of T keyed by ID. The zero value is not usable; call New.
type Store[T any] struct {
	mu   sync.RWMutex // protects m and next
	m    map[int]T
	next int // the highest ID handed out or inserted
}

// New returns an empty store.
func New[T any]() *Store[T] {
	return &Store[T]{m: make(map[int]T)}
}

// Get returns the value stored under id.
func (s *Store[T]) Get(id int) (T, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.m[id]
	return v, ok
}

// GetMany returns the values under ids, aligned with ids, and whether each
// was found.
func (s *Store[T]) GetMany(ids []int) ([]T, []bool) {
	vals := make([]T, len(ids))
	found := make([]bool, len(ids))
	s.mu.RLock()
	defer s.mu.RUnlock()
	for i, id := range ids {
		vals[i], found[i] = s.m[id]
	}
	return vals, found
}

// Insert stores build(id) under id. An id of zero asks the store for the next
// free ID. Insert reports the ID used, and false without storing anything
// when the ID is already taken.
func (s *Store[T]) Insert(id int, build func(id int) T) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id == 0 {
		id = s.next + 1
	}
	if _, ok := s.m[id]; ok {
		return id, false
	}
	s.m[id] = build(id)
	if id > s.next {
		s.next = id
	}
	return id, true
}

// Update replaces the value under id through fn, which receives the stored
// value. It reports false, changing nothing, when id is absent.
func (s *Store[T]) Update(id int, fn func(old T) T) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.m[id]
	if !ok {
		return false
	}
	s.m[id] = fn(old)
	return true
}

// Delete removes id and reports whether it was there.
func (s *Store[T]) Delete(id int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[id]
	delete(s.m, id)
	return ok
}

// Len reports how many values the store holds.
func (s *Store[T]) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.m)
}

// Reserve returns an ID that no value has and no later Insert(0, ...)
// will assign.
func (s *Store[T]) Reserve() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	for {
		if _, ok := s.m[s.next]; !ok {
			return s.next
		}
		s.next++
	}
}

// IDs returns every ID, in no particular order.
func (s *Store[T]) IDs() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]int, 0, len(s.m))
	for id := range s.m {
		ids = append(ids, id)
	}
	return ids
}
