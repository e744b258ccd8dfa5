package memrepo

import "testing"

func TestStore_InsertAssignsIDs(t *testing.T) {
	s := New[string]()
	id1, ok1 := s.Insert(0, func(id int) string { return "a" })
	id2, ok2 := s.Insert(10, func(id int) string { return "b" })
	id3, ok3 := s.Insert(0, func(id int) string { return "c" })
	if !ok1 || !ok2 || !ok3 || id1 != 1 || id2 != 10 || id3 != 11 {
		t.Fatalf("Insert IDs = %d,%d,%d (%v,%v,%v), want 1,10,11 all true", id1, id2, id3, ok1, ok2, ok3)
	}
	if _, ok := s.Insert(10, func(int) string { return "dup" }); ok {
		t.Fatal("Insert(10) over an existing ID succeeded")
	}
	if v, _ := s.Get(10); v != "b" {
		t.Fatalf("Get(10) = %q after a refused insert, want b", v)
	}
}

func TestStore_UpdateDeleteGetMany(t *testing.T) {
	s := New[int]()
	s.Insert(1, func(int) int { return 100 })
	if s.Update(2, func(int) int { return 0 }) {
		t.Fatal("Update(2) of a missing ID reported true")
	}
	s.Update(1, func(old int) int { return old + 1 })
	vals, found := s.GetMany([]int{1, 2})
	if vals[0] != 101 || !found[0] || found[1] {
		t.Fatalf("GetMany = %v %v, want [101 0] [true false]", vals, found)
	}
	if !s.Delete(1) || s.Delete(1) || s.Len() != 0 {
		t.Fatal("Delete did not remove exactly once")
	}
}
