package redisproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ctx returns a context with a generous timeout for commands that should
// succeed.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestStartAnswersPing(t *testing.T) {
	s := Start(t, Options{})
	if got, err := s.Client().Ping(ctx(t)).Result(); err != nil || got != "PONG" {
		t.Fatalf("PING = %q, %v; want PONG", got, err)
	}
	if _, err := os.Stat(s.Dir() + "/redis.log"); err != nil {
		t.Fatalf("log file: %v", err)
	}
	// Options.Args reach the server and override the defaults.
	s2 := Start(t, Options{Args: []string{"--maxmemory", "12345678"}})
	if s2.Addr() == s.Addr() {
		t.Fatalf("two servers share %s", s.Addr())
	}
	got, err := s2.Client().ConfigGet(ctx(t), "maxmemory").Result()
	if err != nil || got["maxmemory"] != "12345678" {
		t.Fatalf("CONFIG GET maxmemory = %v, %v; want 12345678", got, err)
	}
	aof, err := s2.Client().ConfigGet(ctx(t), "appendonly").Result()
	if err != nil || aof["appendonly"] != "no" {
		t.Fatalf("CONFIG GET appendonly = %v, %v; want no", aof, err)
	}
}

func TestPauseResume(t *testing.T) {
	s := Start(t, Options{})
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), ContextTimeoutEnabled: true})
	defer c.Close()
	if err := c.Set(ctx(t), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}

	s.Pause()
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	start := time.Now()
	err := c.Get(short, "k").Err()
	cancel()
	t.Logf("GET on a paused server: %v after %v", err, time.Since(start))
	if err == nil {
		t.Fatal("GET on a paused server succeeded")
	}
	var ne net.Error
	if !errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("GET on a paused server = %v, want a timeout", err)
	}

	s.Resume()
	if got, err := c.Get(ctx(t), "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET after Resume = %q, %v; want v", got, err)
	}
}

func TestKillRestartAOF(t *testing.T) {
	s := Start(t, Options{AOF: true})
	c := s.Client()
	if err := c.Set(ctx(t), "durable", "yes", 0).Err(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()

	s.Kill()
	if err := c.Ping(ctx(t)).Err(); err == nil {
		t.Fatal("PING after Kill succeeded")
	}
	if conn, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		conn.Close()
		t.Fatal("dial after Kill succeeded")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after Kill = %v, want ECONNREFUSED", err)
	}
	s.Kill() // killing a dead server is fine

	s.Restart()
	if s.Addr() != addr {
		t.Fatalf("Restart moved the server from %s to %s", addr, s.Addr())
	}
	if got, err := c.Get(ctx(t), "durable").Result(); err != nil || got != "yes" {
		t.Fatalf("GET after Restart = %q, %v; want yes (reloaded from AOF)", got, err)
	}
}

func TestRestartWithoutAOFLosesData(t *testing.T) {
	s := Start(t, Options{})
	c := s.Client()
	if err := c.Set(ctx(t), "volatile", "yes", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Restart() // kills the running server first
	if err := c.Get(ctx(t), "volatile").Err(); err != redis.Nil {
		t.Fatalf("GET after Restart without AOF = %v, want redis.Nil", err)
	}
}

func TestRestartWhilePaused(t *testing.T) {
	s := Start(t, Options{AOF: true})
	c := s.Client()
	if err := c.Set(ctx(t), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Pause()
	s.Restart()
	if got, err := c.Get(ctx(t), "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET after Restart of a paused server = %q, %v; want v", got, err)
	}
}

// fakeTB records Skip and Fatal calls instead of acting on them, apart
// from ending the goroutine as the real ones do.
type fakeTB struct {
	testing.TB
	skipped string
	failed  string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func startWith(f *fakeTB) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		Start(f, Options{})
	}()
	<-done
}

func TestMissingRedisServer(t *testing.T) {
	t.Setenv("PATH", t.TempDir())

	t.Setenv("CI", "")
	f := &fakeTB{TB: t}
	startWith(f)
	if f.skipped == "" || f.failed != "" {
		t.Fatalf("without CI: skipped %q, failed %q; want a skip", f.skipped, f.failed)
	}

	t.Setenv("CI", "true")
	f = &fakeTB{TB: t}
	startWith(f)
	if f.failed == "" || f.skipped != "" || !strings.Contains(f.failed, ".ci/run") {
		t.Fatalf("with CI=true: skipped %q, failed %q; want a failure naming .ci/run", f.skipped, f.failed)
	}
}

func TestCluster(t *testing.T) {
	cl := StartCluster(t, 3)
	if len(cl.Nodes()) != 3 || len(cl.Addrs()) != 3 {
		t.Fatalf("cluster has %d nodes, %d addresses; want 3", len(cl.Nodes()), len(cl.Addrs()))
	}
	cc := cl.Client()

	// Keys on every master, so that one survives whichever is killed.
	keys := map[*Server]string{}
	for i := 0; len(keys) < 3 && i < 1000; i++ {
		key := fmt.Sprintf("key-%d", i)
		if err := cc.Set(ctx(t), key, "value-"+key, 0).Err(); err != nil {
			t.Fatalf("SET %s via cluster client: %v", key, err)
		}
		m := cl.MasterOf(key)
		if _, seen := keys[m]; !seen {
			keys[m] = key
		}
	}
	if len(keys) != 3 {
		t.Fatalf("keys landed on %d masters, want 3", len(keys))
	}
	for m, key := range keys {
		if got, err := cc.Get(ctx(t), key).Result(); err != nil || got != "value-"+key {
			t.Fatalf("GET %s via cluster client = %q, %v", key, got, err)
		}
		// The plain client of the master has the key, without MOVED.
		if got, err := m.Client().Get(ctx(t), key).Result(); err != nil || got != "value-"+key {
			t.Fatalf("GET %s on its master %s = %q, %v", key, m.Addr(), got, err)
		}
		// Another node redirects.
		for _, n := range cl.Nodes() {
			if n == m {
				continue
			}
			err := n.Client().Get(ctx(t), key).Err()
			if err == nil || !strings.HasPrefix(err.Error(), "MOVED") {
				t.Fatalf("GET %s on non-owner %s = %v, want MOVED", key, n.Addr(), err)
			}
			break
		}
	}

	victim := cl.Nodes()[0]
	victim.Kill()
	if cl.MasterOf(keys[victim]) != victim {
		t.Fatalf("MasterOf no longer names the killed master for its key")
	}
	for m, key := range keys {
		if m == victim {
			continue
		}
		var err error
		var got string
		start := time.Now()
		deadline := start.Add(10 * time.Second)
		attempts := 0
		for {
			attempts++
			got, err = cc.Get(ctx(t), key).Result()
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("GET %s on surviving master after a kill: %d attempt(s), %v", key, attempts, time.Since(start))
		if err != nil || got != "value-"+key {
			t.Fatalf("GET %s (on surviving %s) after killing %s = %q, %v", key, m.Addr(), victim.Addr(), got, err)
		}
	}
}

func TestStartClusterNeedsThreeMasters(t *testing.T) {
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartCluster(f, 2)
	}()
	<-done
	if f.failed == "" {
		t.Fatal("StartCluster(2) did not fail")
	}
}
