package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRun_TellsTheStory(t *testing.T) {
	addrs := []string{""}
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		addrs = append(addrs, a)
	} else if os.Getenv("CI") == "true" {
		t.Fatal("REDIS_ADDR is not set in CI")
	}
	for _, addr := range addrs {
		var out bytes.Buffer
		if err := run(&out, addr, 10*time.Millisecond); err != nil {
			t.Fatalf("run(%q): %v", addr, err)
		}
		for _, want := range []string{
			"cache miss, loaded from the database",
			"cache hit, served from Redis",
			"10 concurrent requests for user 2 resulted in 1 database query (0 failed)",
			"cache entry present afterwards: false",
			`"Alice Liddell", fresh from the database (1 query)`,
			"100 reads of missing user 404: 1 database query",
			"113 reads: 100 answered by the cache (hit rate 88.50%), 13 missed it (11.50%)",
			"of the 13 misses, 4 read the database and 9 waited for one of those reads: 4 database queries in all",
		} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("run(%q) output lacks %q:\n%s", addr, want, out.String())
			}
		}
	}
}
