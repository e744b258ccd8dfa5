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

func TestRun_TellsTheSeedStory(t *testing.T) {
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
			"hit rate 88.50%",
		} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("run(%q) output lacks %q:\n%s", addr, want, out.String())
			}
		}
	}
}
