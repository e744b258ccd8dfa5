package cacheaside

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Sentinel errors. Errors returned by this package wrap them with %w, so
// callers test with errors.Is; backend errors such as redis.Nil never escape
// raw. Every error this package returns says "cacheaside:" once, at its
// start.
var (
	// ErrCacheMiss is returned by a CacheClient's GetJSON when the key holds
	// no value.
	ErrCacheMiss = errors.New("cacheaside: cache miss")

	// ErrNotFound reports that the source of truth has no value for an ID.
	// Loaders given to NewAside report a missing value with an error for
	// which errors.Is(err, ErrNotFound) is true. ErrUserNotFound is one.
	ErrNotFound = errors.New("cacheaside: not found")

	// ErrUserNotFound reports that no user has the requested ID.
	// errors.Is(ErrUserNotFound, ErrNotFound) is true.
	ErrUserNotFound error = &kindError{msg: "cacheaside: user not found", kind: ErrNotFound}

	// ErrUserExists reports that CreateUser was given an ID that is taken.
	ErrUserExists = errors.New("cacheaside: user already exists")

	// ErrInvalidUser reports bad input: an ID of zero or less, a nil user, an
	// empty name, a name with invalid UTF-8 or a NUL character, or a
	// malformed email. It is wrapped with what was wrong, and the repository
	// is never called.
	ErrInvalidUser = errors.New("cacheaside: invalid user")

	// ErrLockTimeout reports that a distributed lock could not be acquired
	// before the caller's context ended.
	ErrLockTimeout = errors.New("cacheaside: lock acquisition timeout")

	// ErrLockNotHeld reports that a DistributedLock is no longer held by the
	// caller: Release found it expired or owned by someone else, or
	// DistributedLock.Err reports it lost or released.
	ErrLockNotHeld = errors.New("cacheaside: lock not held")

	// ErrInvalidArgument reports an argument outside what a function
	// accepts at run time, such as a lock ttl below 3ms.
	ErrInvalidArgument = errors.New("cacheaside: invalid argument")

	// ErrDecode reports a cached entry that cannot be decoded into the
	// destination. The service treats such an entry as a miss and overwrites
	// it with the next fill.
	ErrDecode = errors.New("cacheaside: cannot decode cached value")

	// ErrNotConfigured reports a service or adapter built without a required
	// dependency, such as a nil repository or a nil Redis client.
	ErrNotConfigured = errors.New("cacheaside: not configured")
)

// kindError is a sentinel that also matches a broader sentinel with
// errors.Is.
type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

// prefix starts every error message of this package, once.
const prefix = "cacheaside: "

// opError is the error of one operation of this package: "cacheaside:",
// what the operation was, and the cause. The cause's own "cacheaside:"
// prefixes are left out of the message, so that however many layers of this
// package an error crosses, the prefix is said once; errors.Is and
// errors.As see the cause unchanged.
type opError struct {
	op  string
	err error
}

// wrapErr returns err as the cause of operation op. Each layer passes only
// what the layers around it do not know: the service says which user and
// what it did, the repository which statement failed.
func wrapErr(op string, err error) error { return &opError{op: op, err: err} }

func (e *opError) Error() string { return prefix + e.op + ": " + unprefixed(e.err) }
func (e *opError) Unwrap() error { return e.err }

// unprefixed is err's message without this package's prefixes.
func unprefixed(err error) string { return strings.ReplaceAll(err.Error(), prefix, "") }

// batchError reports the reads of a batch that failed: how many IDs could
// not be read, and each distinct cause (one failed batch query is one cause
// for all of its IDs).
type batchError struct {
	failed int
	causes []error
}

func (e *batchError) Error() string {
	var b strings.Builder
	b.WriteString(prefix + "batch load failed: " + strconv.Itoa(e.failed) + " errors occurred")
	for i, err := range e.causes {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(unprefixed(err))
	}
	return b.String()
}

func (e *batchError) Unwrap() []error { return e.causes }

// PanicError is the error every waiter of a shared load receives when the
// loader panicked. The panic does not escape to the caller's goroutine, and
// the key is free for the next load.
type PanicError struct {
	// Value is the value passed to panic.
	Value any
	// Stack is the stack of the goroutine that panicked.
	Stack []byte
}

// Error returns the panic value and the stack of the panicking goroutine.
func (e *PanicError) Error() string {
	return prefix + "loader panicked: " + strings.ReplaceAll(fmt.Sprint(e.Value), prefix, "") + "\n\n" + string(e.Stack)
}

// Unwrap returns the panic value when it is an error, so errors.Is and
// errors.As see through a panic(err).
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}
