// Package faultproxy is a loopback TCP proxy whose network faults can be
// switched on and off while connections are open.
//
// It exists for fault-injection tests and for the cachebench outage
// scenario: a client (for example a go-redis client) dials [Proxy.Addr]
// instead of the real server, and the test then partitions the network
// ([Proxy.Blackhole]), tears every connection down with a TCP reset
// ([Proxy.ResetAll]), makes the address refuse connections
// ([Proxy.Refuse]), or heals everything again ([Proxy.Pass]).
//
// A Proxy is safe for concurrent use. Every goroutine it starts has ended
// when [Proxy.Close] returns, so it can be used in tests checked with
// go.uber.org/goleak.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// DialTimeout bounds how long the proxy waits when it dials the target for
// a newly accepted connection. If the dial fails, the accepted client
// connection is closed.
const DialTimeout = 5 * time.Second

// rebindTimeout bounds how long [Proxy.Pass] retries binding the original
// address after [Proxy.Refuse].
const rebindTimeout = 5 * time.Second

// mode is the fault currently applied to new and existing connections.
type mode int

const (
	modePass mode = iota
	modeBlackhole
	modeRefuse
)

// Proxy forwards TCP connections from a loopback listen address to a
// target address and injects faults on demand. Create one with [New].
type Proxy struct {
	target string
	addr   string // fixed listen address, reused when re-listening

	mu     sync.Mutex
	mode   mode
	ln     net.Listener // nil while refusing or after Close
	links  map[*link]struct{}
	closed bool

	wg sync.WaitGroup // every goroutine the proxy starts

	// dialCtx is canceled by Close so that pending dials to the target end.
	dialCtx    context.Context
	cancelDial context.CancelFunc
}

// link is one proxied connection: the accepted client connection and, once
// dialed, the connection to the target.
type link struct {
	client *net.TCPConn
	server net.Conn // nil until dialed; never dialed for a black-holed accept

	// blackholed is set when the link was open while the proxy was in
	// blackhole mode. It never goes back to false: such a link only drops
	// bytes until it is closed by Pass, ResetAll, Refuse or Close.
	blackholed atomic.Bool

	// Guarded by Proxy.mu.
	closed    bool
	pipesDone int
}

// New starts a proxy that listens on 127.0.0.1 on a port chosen by the
// operating system and forwards every accepted connection to target, a
// host:port address. The target is dialed once per accepted connection, so
// it does not need to be up when New is called. The proxy starts in pass
// mode. Call [Proxy.Close] to stop it.
func New(target string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("faultproxy: bad target %q: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target:     target,
		addr:       ln.Addr().String(),
		ln:         ln,
		links:      make(map[*link]struct{}),
		dialCtx:    ctx,
		cancelDial: cancel,
	}
	p.wg.Add(1)
	go p.acceptLoop(ln)
	return p, nil
}

// Addr returns the address clients should dial, in host:port form. It does
// not change for the life of the proxy, including across [Proxy.Refuse] and
// [Proxy.Pass].
func (p *Proxy) Addr() string { return p.addr }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Pass heals every fault: new connections are forwarded normally.
//
// Connections that were open at any time while the proxy was black-holed
// are closed (with a TCP reset on the client side), as a real partition
// usually ends with broken TCP state; other open connections are left
// alone. If the proxy was refusing, Pass listens again on the same address
// as before, retrying the bind for up to 5 seconds in case the port is
// briefly unavailable; it returns an error if that fails (the proxy then
// stays in refuse mode) or if the proxy is closed. Pass on a proxy that is
// already passing does nothing and returns nil.
func (p *Proxy) Pass() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return net.ErrClosed
	}
	switch p.mode {
	case modeBlackhole:
		for l := range p.links {
			if l.blackholed.Load() {
				p.closeLinkLocked(l, true)
			}
		}
	case modeRefuse:
		ln, err := listenRetry(p.addr, rebindTimeout)
		if err != nil {
			return fmt.Errorf("faultproxy: re-listen on %s: %w", p.addr, err)
		}
		p.ln = ln
		p.wg.Add(1)
		go p.acceptLoop(ln)
	}
	p.mode = modePass
	return nil
}

// Blackhole simulates a network partition. Open connections stay open but
// no more bytes are forwarded in either direction: bytes read from either
// side are dropped, and a close by either side is not passed on, so each
// peer sees only silence (no data, no FIN, no RST). New connections are
// still accepted, so a client's dial succeeds, but the target is not dialed
// and nothing the client sends goes anywhere. The partition lasts until
// [Proxy.Pass], [Proxy.ResetAll], [Proxy.Refuse] or [Proxy.Close], each of
// which closes the black-holed connections. Blackhole on a refusing proxy
// leaves it refusing.
//
// Bytes the proxy had already read when Blackhole was called may still be
// delivered; bytes sent after Blackhole returns are not. Because the proxy
// keeps reading and discarding, a peer's writes do not block as they would
// once the send buffer filled up in a real partition; only its reads hang.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.mode == modeRefuse {
		return
	}
	p.mode = modeBlackhole
	for l := range p.links {
		l.blackholed.Store(true)
	}
}

// ResetAll closes every open connection abruptly: the client side is closed
// with a TCP reset (SO_LINGER 0), so the client sees ECONNRESET on its next
// read or write, and the connection to the target is closed. The proxy then
// forwards new connections normally, ending any blackhole. ResetAll is a
// one-shot action, not a mode. On a refusing proxy it does nothing, since
// there are no connections and the listener stays closed.
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.mode == modeRefuse {
		return
	}
	for l := range p.links {
		p.closeLinkLocked(l, true)
	}
	p.mode = modePass
}

// Refuse simulates a server that is down: the listener is closed, so dials
// to [Proxy.Addr] fail with connection refused, and every open connection
// is closed normally (both peers see EOF). [Proxy.Pass] listens again on the
// same address.
func (p *Proxy) Refuse() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.mode == modeRefuse {
		return
	}
	p.mode = modeRefuse
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for l := range p.links {
		p.closeLinkLocked(l, false)
	}
}

// Close stops the proxy: it closes the listener and every connection and
// waits until every goroutine the proxy started has returned. After Close,
// the mode methods do nothing and Pass returns an error. Close is safe to
// call more than once; later calls return nil.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.cancelDial()
	var err error
	if p.ln != nil {
		err = p.ln.Close()
		p.ln = nil
	}
	for l := range p.links {
		p.closeLinkLocked(l, false)
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// listenRetry binds addr, retrying until timeout passes.
func listenRetry(addr string, timeout time.Duration) (net.Listener, error) {
	deadline := time.Now().Add(timeout)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			return ln, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// acceptLoop accepts connections on ln until ln is closed.
func (p *Proxy) acceptLoop(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Temporary errors such as EMFILE: back off and keep going,
			// unless the listener has been replaced or closed meanwhile.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.handle(c.(*net.TCPConn))
	}
}

// handle registers a newly accepted connection and starts serving it.
func (p *Proxy) handle(c *net.TCPConn) {
	l := &link{client: c}
	p.mu.Lock()
	if p.closed || p.mode == modeRefuse {
		// Accepted just before the listener was closed.
		p.mu.Unlock()
		c.Close()
		return
	}
	if p.mode == modeBlackhole {
		l.blackholed.Store(true)
	}
	p.links[l] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()

	if l.blackholed.Load() {
		go p.swallow(l)
	} else {
		go p.dialAndPipe(l)
	}
}

// swallow reads and drops everything the client of a link accepted during a
// blackhole sends, until the link is closed. The target is never dialed.
func (p *Proxy) swallow(l *link) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		if _, err := l.client.Read(buf); err != nil {
			// Leave the link registered even if the client went away, so
			// that the peer never sees anything from us; Pass, ResetAll,
			// Refuse or Close will clean it up.
			return
		}
	}
}

// dialAndPipe dials the target for l and then copies bytes both ways.
func (p *Proxy) dialAndPipe(l *link) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: DialTimeout}
	s, err := d.DialContext(p.dialCtx, "tcp", p.target)
	p.mu.Lock()
	if l.closed {
		p.mu.Unlock()
		if s != nil {
			s.Close()
		}
		return
	}
	if err != nil {
		// The target is unreachable: the client sees the connection close,
		// as it would through a transparent proxy.
		p.closeLinkLocked(l, false)
		p.mu.Unlock()
		return
	}
	l.server = s
	p.wg.Add(2)
	p.mu.Unlock()
	go p.pipe(l, l.client, s)
	go p.pipe(l, s, l.client)
}

// pipe copies from src to dst until src fails, dropping bytes while l is
// black-holed. In pass mode an EOF from src is passed on as a half-close of
// dst, and the link is closed once both directions have ended.
func (p *Proxy) pipe(l *link, src, dst net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, rerr := src.Read(buf)
		if n > 0 && !l.blackholed.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				p.mu.Lock()
				if !l.closed && !l.blackholed.Load() {
					p.closeLinkLocked(l, false)
				}
				p.mu.Unlock()
				return
			}
		}
		if rerr != nil {
			p.mu.Lock()
			p.srcEndedLocked(l, dst)
			p.mu.Unlock()
			return
		}
	}
}

// srcEndedLocked records that one direction of l has ended. p.mu must be
// held.
func (p *Proxy) srcEndedLocked(l *link, dst net.Conn) {
	if l.closed || l.blackholed.Load() {
		// Closed by the proxy, or partitioned: say nothing to dst.
		return
	}
	l.pipesDone++
	if l.pipesDone == 2 {
		p.closeLinkLocked(l, false)
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		p.closeLinkLocked(l, false)
	}
}

// closeLinkLocked closes both sides of l and forgets it. With rst, the
// client side is closed with a TCP reset. p.mu must be held.
func (p *Proxy) closeLinkLocked(l *link, rst bool) {
	if l.closed {
		return
	}
	l.closed = true
	delete(p.links, l)
	if rst {
		l.client.SetLinger(0)
	}
	l.client.Close()
	if l.server != nil {
		l.server.Close()
	}
}
