// Package redisproc starts real redis-server processes for tests and abuses
// them: it can pause a server (SIGSTOP, as in a stalled fork or a
// partition), kill it (SIGKILL), and restart it on the same port and data
// directory, so that with an append-only file it reloads every acknowledged
// write. It can also start a small Redis Cluster of masters without
// replicas.
//
// Every server listens on 127.0.0.1 on a port chosen by the operating
// system, keeps its files in a fresh t.TempDir(), and is killed, together
// with any child it forked, when the test ends. If redis-server is not
// installed, tests that use this package are skipped, unless the
// environment variable CI is "true", in which case they fail so that a CI
// image without Redis cannot pass silently.
//
// The functions and methods take a testing.TB and report failures with
// t.Fatalf, so they must be called from the goroutine running the test.
package redisproc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Time limits. They are generous because tests may run on a loaded
// machine.
const (
	// readyTimeout bounds how long a started server may take to answer
	// PING.
	readyTimeout = 5 * time.Second
	// rebindTimeout bounds how long Restart retries binding the old port.
	rebindTimeout = 5 * time.Second
	// clusterTimeout bounds how long StartCluster waits for every node to
	// report cluster_state:ok.
	clusterTimeout = 10 * time.Second
	// exitTimeout bounds how long Kill waits for a killed process to be
	// reaped.
	exitTimeout = 10 * time.Second
	// startAttempts is how many fresh ports Start tries when a port it was
	// given by the operating system is taken before redis-server binds it.
	startAttempts = 5
)

// Options configures a server started by [Start].
type Options struct {
	// AOF turns on the append-only file with appendfsync always, so that a
	// server restarted with [Server.Restart] has every write it
	// acknowledged before it was killed. When false, the server keeps no
	// data across a restart (snapshots are off in either case).
	AOF bool

	// Cluster starts the server in cluster mode with cluster-node-timeout
	// 2000 (milliseconds) and cluster-require-full-coverage no. The
	// cluster bus listens on a second free port. The server serves no
	// slots until it joins a cluster; see [StartCluster].
	Cluster bool

	// Args are extra redis-server command-line arguments, such as
	// "--maxmemory", "10mb". They come after the package's own arguments
	// and so override them.
	Args []string
}

// Server is a redis-server process owned by a test. Its methods must be
// called from the test's goroutine.
type Server struct {
	t       testing.TB
	bin     string
	opts    Options
	dir     string
	port    int
	busPort int // cluster bus port; 0 unless opts.Cluster

	mu   sync.Mutex
	proc *os.Process   // nil when not running
	done chan struct{} // closed when proc has been reaped
}

// Start starts a redis-server on 127.0.0.1 with the given options and waits
// up to 5 seconds until it answers PING. The server runs in the foreground
// with a fresh t.TempDir() as its working directory, no RDB snapshots, and
// its log in redis.log in that directory. If the port the operating system
// offered is taken before redis-server binds it, Start tries another one.
//
// The server is killed when the test and its subtests end (with SIGCONT
// first in case it is paused, then SIGKILL), before the directory is
// removed. If redis-server is not on PATH, Start skips the test, or fails
// it when the environment variable CI is "true".
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	bin := lookPath(t, "redis-server")
	s := &Server{
		t:    t,
		bin:  bin,
		opts: opts,
		dir:  t.TempDir(),
	}
	// Registered after t.TempDir, so it runs before the directory goes.
	t.Cleanup(s.stop)

	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		port, busPort, err := freePorts(opts.Cluster)
		if err != nil {
			t.Fatalf("redisproc: find a free port: %v", err)
		}
		s.port, s.busPort = port, busPort
		err = s.launch()
		if err == nil {
			return s
		}
		lastErr = err
		if !errors.Is(err, errPortInUse) {
			break
		}
	}
	t.Fatalf("redisproc: start redis-server: %v", lastErr)
	return nil
}

// Addr returns the server's address, "127.0.0.1:port". It is the same
// across [Server.Restart].
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port returns the server's TCP port.
func (s *Server) Port() int { return s.port }

// Dir returns the server's working directory, which holds its log
// (redis.log), its append-only files and, in cluster mode, nodes.conf.
func (s *Server) Dir() string { return s.dir }

// Pause stops the server process with SIGSTOP. The server then hangs:
// connections and dials still succeed at the TCP level (the kernel accepts
// them into the listen backlog), but no command is answered until
// [Server.Resume]. It fails the test if the server is not running.
func (s *Server) Pause() {
	s.t.Helper()
	s.signal(syscall.SIGSTOP, "Pause")
}

// Resume continues a server stopped by [Server.Pause] with SIGCONT. Commands
// sent while it was paused are then processed. It fails the test if the
// server is not running.
func (s *Server) Resume() {
	s.t.Helper()
	s.signal(syscall.SIGCONT, "Resume")
}

// Kill kills the server with SIGKILL and waits until the process has
// exited. Afterwards the address refuses connections, and open connections
// see EOF or a reset. Killing a server that is paused or not running is
// fine.
func (s *Server) Kill() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.killLocked(); err != nil {
		s.t.Fatalf("redisproc: Kill %s: %v", s.Addr(), err)
	}
}

// Restart starts the server again on the same port and directory with the
// same options, killing it first if it is still running, and waits until it
// answers PING. With [Options.AOF] the new process loads the append-only
// file, so every write acknowledged before the kill is back; PING is only
// answered once loading is done. A cluster node keeps its node ID and slots
// from nodes.conf. Restart retries the bind for up to 5 seconds, as the port
// may briefly still be in use.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	if err := s.killLocked(); err != nil {
		s.mu.Unlock()
		s.t.Fatalf("redisproc: Restart %s: kill: %v", s.Addr(), err)
	}
	s.mu.Unlock()
	deadline := time.Now().Add(rebindTimeout)
	for {
		err := s.launch()
		if err == nil {
			return
		}
		if !errors.Is(err, errPortInUse) || time.Now().After(deadline) {
			s.t.Fatalf("redisproc: Restart %s: %v", s.Addr(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Client returns a new go-redis client with default options for the
// server's address. It is closed when the test ends, before the server is
// killed. Because the address is stable, the client keeps working across
// [Server.Restart].
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	s.t.Cleanup(func() { c.Close() })
	return c
}

// errPortInUse reports that redis-server exited because it could not bind
// its port.
var errPortInUse = errors.New("port in use")

// launch starts the process on s.port and waits until it is ready. If the
// process exits because the port is taken, the error wraps errPortInUse.
func (s *Server) launch() error {
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--daemonize", "no",
		"--logfile", filepath.Join(s.dir, "redis.log"),
		"--save", "",
	}
	if s.opts.AOF {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	if s.opts.Cluster {
		args = append(args,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000",
			"--cluster-require-full-coverage", "no",
			"--cluster-port", strconv.Itoa(s.busPort),
		)
	}
	args = append(args, s.opts.Args...)

	// Anything printed before the log file is opened (such as a
	// configuration error) goes to stdio.log.
	out, err := os.OpenFile(filepath.Join(s.dir, "stdio.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group, so that a fork (an AOF rewrite) is
		// signaled too.
		Setpgid: true,
		// If the test binary dies (for example on a test timeout), take
		// the server with it instead of leaving it running.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.proc, s.done = cmd.Process, done
	s.mu.Unlock()

	err = waitReady(s.Addr(), cmd.Process.Pid, done, readyTimeout)
	if err == nil {
		return nil
	}
	s.mu.Lock()
	s.killLocked()
	s.mu.Unlock()
	logs := s.logTail()
	if strings.Contains(logs, "Address already in use") {
		err = fmt.Errorf("%w: %v", errPortInUse, err)
	}
	return fmt.Errorf("%v; %s %s; log:\n%s", err, s.bin, strings.Join(quoteArgs(args), " "), logs)
}

// signal sends sig to the server's process group.
func (s *Server) signal(sig syscall.Signal, op string) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		s.t.Fatalf("redisproc: %s %s: server is not running", op, s.Addr())
	}
	if err := syscall.Kill(-s.proc.Pid, sig); err != nil {
		s.t.Fatalf("redisproc: %s %s: %v", op, s.Addr(), err)
	}
}

// killLocked kills the process group and waits for the process to be
// reaped. It does nothing if the server is not running. s.mu must be held.
func (s *Server) killLocked() error {
	if s.proc == nil {
		return nil
	}
	pid := s.proc.Pid
	// A stopped process dies on SIGKILL, but its forked children are
	// resumed too so that nothing is left stopped in the group.
	syscall.Kill(-pid, syscall.SIGCONT)
	syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-s.done:
	case <-time.After(exitTimeout):
		return fmt.Errorf("process %d did not exit within %v of SIGKILL", pid, exitTimeout)
	}
	// Children that outlived the leader (normally none) are still in
	// the group.
	syscall.Kill(-pid, syscall.SIGKILL)
	s.proc, s.done = nil, nil
	return nil
}

// stop is the cleanup registered by Start.
func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.killLocked(); err != nil {
		s.t.Errorf("redisproc: stop %s: %v", s.Addr(), err)
	}
}

// logTail returns the end of the server's log files, for error messages.
func (s *Server) logTail() string {
	var b strings.Builder
	for _, name := range []string{"stdio.log", "redis.log"} {
		data, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil || len(data) == 0 {
			continue
		}
		if len(data) > 2000 {
			data = data[len(data)-2000:]
		}
		fmt.Fprintf(&b, "--- %s ---\n%s", name, data)
	}
	return b.String()
}

// lookPath finds an executable, skipping or failing the test if it is
// missing.
func lookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("redisproc: %s not found on PATH (%v); CI=true, so this is an error: .ci/run must install redis-server (Debian packages redis-server and redis-tools, which has redis-cli)", name, err)
	}
	t.Skipf("redisproc: %s not found on PATH; skipping (install redis-server to run this test)", name)
	return ""
}

// freePorts returns a port, and a second one for the cluster bus if
// cluster is true, that were free a moment ago.
func freePorts(cluster bool) (port, busPort int, err error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	n := 1
	if cluster {
		n = 2
	}
	ports := make([]int, 2)
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, err
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports[0], ports[1], nil
}

// waitReady waits until the server at addr answers PING and reports pid as
// its process ID (so that it is not some other process that took the port).
// It gives up early if done is closed (the process exited).
func waitReady(addr string, pid int, done <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		select {
		case <-done:
			return fmt.Errorf("redis-server exited before answering PING (last error: %v)", lastErr)
		default:
		}
		got, err := pingPID(addr)
		if err == nil {
			if got == pid {
				return nil
			}
			err = fmt.Errorf("%s is served by process %d, not %d", addr, got, pid)
		}
		lastErr = err
		if time.Now().After(deadline) {
			return fmt.Errorf("no PONG from %s within %v: %v", addr, timeout, lastErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pingPID sends PING and INFO server to addr and returns the process ID the
// server reports.
func pingPID(addr string) (int, error) {
	replies, err := rawDo(addr, time.Second, []string{"PING"}, []string{"INFO", "server"})
	if err != nil {
		return 0, err
	}
	if replies[0] != "PONG" {
		return 0, fmt.Errorf("PING answered %q", replies[0])
	}
	v, ok := infoField(replies[1], "process_id")
	if !ok {
		return 0, errors.New("INFO server has no process_id")
	}
	return strconv.Atoi(v)
}

// infoField returns the value of field in the text of an INFO or CLUSTER
// INFO reply.
func infoField(info, field string) (string, bool) {
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && k == field {
			return v, true
		}
	}
	return "", false
}

// rawDo sends commands to addr over a new connection and returns their
// replies, which must be simple strings, integers or bulk strings. A Redis
// error reply is returned as an error. It uses no go-redis machinery, so it
// starts no goroutines and retries nothing.
func rawDo(addr string, timeout time.Duration, cmds ...[]string) ([]string, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	var req bytes.Buffer
	for _, cmd := range cmds {
		fmt.Fprintf(&req, "*%d\r\n", len(cmd))
		for _, a := range cmd {
			fmt.Fprintf(&req, "$%d\r\n%s\r\n", len(a), a)
		}
	}
	if _, err := c.Write(req.Bytes()); err != nil {
		return nil, err
	}
	r := bufio.NewReader(c)
	replies := make([]string, 0, len(cmds))
	for range cmds {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		line = strings.TrimSuffix(line, "\r\n")
		if line == "" {
			return nil, errors.New("empty reply line")
		}
		switch line[0] {
		case '+', ':':
			replies = append(replies, line[1:])
		case '-':
			return nil, fmt.Errorf("redis error: %s", line[1:])
		case '$':
			n, err := strconv.Atoi(line[1:])
			if err != nil || n < 0 {
				return nil, fmt.Errorf("unexpected bulk header %q", line)
			}
			buf := make([]byte, n+2)
			if _, err := io.ReadFull(r, buf); err != nil {
				return nil, err
			}
			replies = append(replies, string(buf[:n]))
		default:
			return nil, fmt.Errorf("unexpected reply %q", line)
		}
	}
	return replies, nil
}

func quoteArgs(args []string) []string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return q
}

// Cluster is a Redis Cluster of masters without replicas, started by
// [StartCluster].
//
// Its nodes run with cluster-require-full-coverage no: when a master is
// killed or paused, only the keys in its slots become unavailable, and the
// surviving masters keep serving theirs (with the default, yes, every node
// would reject all keys once the dead master is marked failed). With no
// replicas there is no failover: the dead master's slots stay unserved until
// it is restarted.
type Cluster struct {
	t     testing.TB
	nodes []*Server
}

// StartCluster starts masters cluster-enabled servers (at least 3, the
// minimum redis-cli accepts), joins them with "redis-cli --cluster create
// ... --cluster-replicas 0 --cluster-yes", which spreads the 16384 slots
// evenly, and waits up to 10 seconds until CLUSTER INFO reports
// cluster_state:ok on every node. Cluster nodes use a cluster-node-timeout
// of 2 seconds, so a killed or paused master is marked failed by the others
// after about 2 to 4 seconds. The servers are killed when the test ends.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	if masters < 3 {
		t.Fatalf("redisproc: StartCluster(%d): redis-cli --cluster create needs at least 3 masters", masters)
	}
	cli := lookPath(t, "redis-cli")
	c := &Cluster{t: t}
	for i := 0; i < masters; i++ {
		c.nodes = append(c.nodes, Start(t, Options{Cluster: true}))
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redisproc: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}

	deadline := time.Now().Add(clusterTimeout)
	for _, n := range c.nodes {
		for {
			replies, err := rawDo(n.Addr(), time.Second, []string{"CLUSTER", "INFO"})
			if err == nil {
				if state, _ := infoField(replies[0], "cluster_state"); state == "ok" {
					break
				}
				err = fmt.Errorf("CLUSTER INFO:\n%s", replies[0])
			}
			if time.Now().After(deadline) {
				t.Fatalf("redisproc: cluster node %s not ok within %v: %v", n.Addr(), clusterTimeout, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// Addrs returns the addresses of the cluster's nodes, in the order of
// [Cluster.Nodes].
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.Addr()
	}
	return addrs
}

// Nodes returns the cluster's servers. Each can be paused, killed and
// restarted like any [Server]; a restarted node rejoins with its old node ID
// and slots (but, without AOF, no data).
func (c *Cluster) Nodes() []*Server {
	return append([]*Server(nil), c.nodes...)
}

// Client returns a new go-redis cluster client with default options, seeded
// with every node's address. It is closed when the test ends, before the
// servers are killed.
func (c *Cluster) Client() *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	c.t.Cleanup(func() { cc.Close() })
	return cc
}

// MasterOf returns the node that serves the slot of key, according to
// CLUSTER KEYSLOT and CLUSTER SHARDS asked of the first node that answers.
// The answer does not depend on whether that master is up: the slots of a
// killed master still belong to it, since with no replicas there is no
// failover. MasterOf fails the test if no node answers or no master serves
// the slot.
func (c *Cluster) MasterOf(key string) *Server {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var lastErr error
	for _, n := range c.nodes {
		srv, err := c.masterOf(ctx, n.Addr(), key)
		if err == nil {
			return srv
		}
		lastErr = err
	}
	c.t.Fatalf("redisproc: MasterOf(%q): %v", key, lastErr)
	return nil
}

func (c *Cluster) masterOf(ctx context.Context, addr, key string) (*Server, error) {
	rc := redis.NewClient(&redis.Options{
		Addr:        addr,
		MaxRetries:  -1,
		DialTimeout: time.Second,
		ReadTimeout: 2 * time.Second,
	})
	defer rc.Close()
	slot, err := rc.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER KEYSLOT via %s: %w", addr, err)
	}
	shards, err := rc.ClusterShards(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER SHARDS via %s: %w", addr, err)
	}
	for _, sh := range shards {
		owns := false
		for _, r := range sh.Slots {
			if r.Start <= slot && slot <= r.End {
				owns = true
				break
			}
		}
		if !owns {
			continue
		}
		for _, node := range sh.Nodes {
			if node.Role != "master" {
				continue
			}
			for _, n := range c.nodes {
				if int64(n.port) == node.Port {
					return n, nil
				}
			}
			return nil, fmt.Errorf("slot %d is served by port %d, which is none of %v", slot, node.Port, c.Addrs())
		}
	}
	return nil, fmt.Errorf("CLUSTER SHARDS via %s: no master serves slot %d", addr, slot)
}
