package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Generous bounds for a loaded two-core machine; none of them is asserted
// as a performance target.
const (
	silence = 200 * time.Millisecond // how long "nothing arrives" is checked
	prompt  = 5 * time.Second        // upper bound for things that should be quick
)

// echoServer is a TCP server that writes back whatever it reads and counts
// the bytes it has received.
type echoServer struct {
	ln       net.Listener
	received atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln, conns: make(map[net.Conn]struct{})}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns[c] = struct{}{}
			e.mu.Unlock()
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer func() {
					e.mu.Lock()
					delete(e.conns, c)
					e.mu.Unlock()
					c.Close()
				}()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						e.received.Add(int64(n))
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(e.close)
	return e
}

func (e *echoServer) addr() string { return e.ln.Addr().String() }

// dropConns closes every connection the echo server has accepted.
func (e *echoServer) dropConns() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for c := range e.conns {
		c.Close()
	}
}

func (e *echoServer) close() {
	e.ln.Close()
	e.dropConns()
	e.wg.Wait()
}

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, prompt)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg to c and requires the same bytes to come back.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(prompt))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo of %q: %v", msg, err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

// requireSilence writes msg (if any) to c and requires that a read with a
// short deadline times out: no data, no EOF, no reset.
func requireSilence(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if msg != "" {
		c.SetWriteDeadline(time.Now().Add(prompt))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("write during silence: %v", err)
		}
	}
	c.SetReadDeadline(time.Now().Add(silence))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if n > 0 {
		t.Fatalf("read %q, want silence", buf[:n])
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read error = %v, want a deadline timeout (connection must stay open)", err)
	}
}

// requireClosed requires that a read on c fails promptly with something
// other than a timeout, and returns that error.
func requireClosed(t *testing.T, c net.Conn) error {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(prompt))
	buf := make([]byte, 64)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			t.Fatalf("read %q, want the connection closed", buf[:n])
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection still open after %v", prompt)
		}
		return err
	}
}

func TestPassForwards(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	if p.Addr() == e.addr() {
		t.Fatalf("proxy address %s equals target", p.Addr())
	}
	if p.Target() != e.addr() {
		t.Fatalf("Target() = %s, want %s", p.Target(), e.addr())
	}
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, a, "hello")
	roundTrip(t, b, "world")
	big := string(bytes.Repeat([]byte("0123456789"), 8000)) // more than one 32 KiB buffer
	roundTrip(t, a, big)
	if got, want := e.received.Load(), int64(len("hello")+len("world")+len(big)); got != want {
		t.Fatalf("target received %d bytes, want %d", got, want)
	}
}

func TestTargetCloseReachesClient(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "ping")
	e.dropConns()
	if err := requireClosed(t, c); err != io.EOF {
		t.Fatalf("read after target closed = %v, want EOF", err)
	}
}

func TestTargetDownClosesClient(t *testing.T) {
	// A port that was just free: nothing listens on it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close()

	p := newProxy(t, target)
	c := dial(t, p.Addr()) // the proxy accepts...
	requireClosed(t, c)    // ...then closes once its own dial is refused.
}

func TestBlackhole(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	old := dial(t, p.Addr())
	roundTrip(t, old, "before")

	p.Blackhole()
	before := e.received.Load()

	// An open connection goes silent but is not closed.
	requireSilence(t, old, "lost")
	requireSilence(t, old, "")

	// A new connection is accepted but nothing is forwarded.
	fresh := dial(t, p.Addr())
	requireSilence(t, fresh, "also lost")

	// The target closing its side is not passed on either.
	e.dropConns()
	requireSilence(t, old, "")

	if got := e.received.Load(); got != before {
		t.Fatalf("target received %d bytes during the blackhole", got-before)
	}

	if err := p.Pass(); err != nil {
		t.Fatalf("Pass: %v", err)
	}
	// Connections that lived through the partition are closed...
	requireClosed(t, old)
	requireClosed(t, fresh)
	// ...and new ones are forwarded again.
	roundTrip(t, dial(t, p.Addr()), "after")
}

func TestPassDoesNotCloseHealthyConnections(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "one")
	if err := p.Pass(); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "two")
}

func TestResetAll(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p.Addr())
	roundTrip(t, c, "before")

	p.ResetAll()
	err := requireClosed(t, c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after ResetAll = %v, want ECONNRESET", err)
	}
	roundTrip(t, dial(t, p.Addr()), "after")
}

func TestResetAllEndsBlackhole(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p.Addr())
	p.Blackhole()
	requireSilence(t, c, "lost")
	p.ResetAll()
	if err := requireClosed(t, c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after ResetAll = %v, want ECONNRESET", err)
	}
	roundTrip(t, dial(t, p.Addr()), "after")
}

func TestRefuse(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	addr := p.Addr()
	c := dial(t, addr)
	roundTrip(t, c, "before")

	p.Refuse()
	if err := requireClosed(t, c); err != io.EOF {
		t.Fatalf("open connection after Refuse: read = %v, want EOF", err)
	}
	if c2, err := net.DialTimeout("tcp", addr, prompt); err == nil {
		c2.Close()
		t.Fatal("dial succeeded while refusing")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial while refusing = %v, want ECONNREFUSED", err)
	}
	p.Blackhole() // must not re-open the listener
	if c2, err := net.DialTimeout("tcp", addr, prompt); err == nil {
		c2.Close()
		t.Fatal("dial succeeded after Blackhole on a refusing proxy")
	}

	if err := p.Pass(); err != nil {
		t.Fatalf("Pass: %v", err)
	}
	if p.Addr() != addr {
		t.Fatalf("Addr changed from %s to %s", addr, p.Addr())
	}
	roundTrip(t, dial(t, addr), "after")
}

func TestClose(t *testing.T) {
	e := startEcho(t)
	ignore := goleak.IgnoreCurrent()

	p, err := New(e.addr())
	if err != nil {
		t.Fatal(err)
	}
	passing := dial(t, p.Addr())
	roundTrip(t, passing, "x")
	p.Blackhole()
	holed := dial(t, p.Addr())
	requireSilence(t, holed, "y")

	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Checked at once, without goleak's retries: Close must have waited, so
	// no goroutine of the proxy may still be blocked. One that has run its
	// deferred wg.Done but not yet returned is runnable, and must be gone
	// shortly after.
	if stacks := proxyGoroutines(func(state string) bool {
		return state != "runnable" && state != "running"
	}); stacks != "" {
		t.Fatalf("goroutines of the proxy still blocked after Close:\n%s", stacks)
	}
	for deadline := time.Now().Add(2 * time.Second); ; {
		stacks := proxyGoroutines(func(string) bool { return true })
		if stacks == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines of the proxy still running 2s after Close:\n%s", stacks)
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	requireClosed(t, passing)
	requireClosed(t, holed)
	if _, err := net.DialTimeout("tcp", p.Addr(), prompt); err == nil {
		t.Fatal("dial succeeded after Close")
	}
	if err := p.Pass(); err == nil {
		t.Fatal("Pass after Close succeeded")
	}
	p.Blackhole()
	p.ResetAll()
	p.Refuse()

	// The echo server's handlers for the proxied connections end once the
	// proxy has closed its side; nothing of the proxy may remain.
	goleak.VerifyNone(t, ignore)
}

// proxyGoroutines returns the stacks of running goroutines that are in a
// method of Proxy.
// proxyGoroutines returns the stacks of the proxy's goroutines whose state
// (as runtime.Stack prints it: "runnable", "IO wait", ...) is selected.
func proxyGoroutines(selected func(state string) bool) string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "faultproxy.(*Proxy).") || strings.Contains(g, "proxyGoroutines") {
			continue
		}
		state := ""
		if i, j := strings.IndexByte(g, '['), strings.IndexByte(g, ']'); i >= 0 && j > i {
			state, _, _ = strings.Cut(g[i+1:j], ",") // "IO wait, 2 minutes"
		}
		if selected(state) {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

func TestConcurrentModeSwitches(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 5)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
				if err != nil {
					time.Sleep(time.Millisecond)
					continue
				}
				c.SetDeadline(time.Now().Add(50 * time.Millisecond))
				c.Write([]byte("hello"))
				io.ReadFull(c, buf)
				c.Close()
			}
		}()
	}
	for i := 0; i < 30; i++ {
		switch i % 4 {
		case 0:
			p.Blackhole()
		case 1:
			p.ResetAll()
		case 2:
			p.Refuse()
		case 3:
			if err := p.Pass(); err != nil {
				t.Errorf("Pass: %v", err)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if err := p.Pass(); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, dial(t, p.Addr()), "still works")
}
