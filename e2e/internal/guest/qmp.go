package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// QMP is a small QEMU Machine Protocol client: capabilities negotiation,
// commands matched to replies by id, file descriptors passed with
// SCM_RIGHTS, and every asynchronous event kept for waiters.
type QMP struct {
	conn *net.UnixConn

	wmu sync.Mutex // one command on the wire at a time (fd and bytes together)

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan qmpReply
	events  []Event
	evWake  chan struct{} // closed and replaced on every event
	readErr error
	closed  chan struct{}
}

// Event is one QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
	At   time.Time       `json:"-"`
}

// QMPError is an error reply.
type QMPError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *QMPError) Error() string { return e.Class + ": " + e.Desc }

type qmpReply struct {
	Return json.RawMessage
	Err    *QMPError
}

type qmpMessage struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	ID        *uint64         `json:"id"`
	Return    json.RawMessage `json:"return"`
	Error     *QMPError       `json:"error"`
	QMP       json.RawMessage `json:"QMP"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// DialQMP connects to QEMU's QMP unix socket, retrying until ctx ends (QEMU
// creates the socket a moment after it starts), reads the greeting and
// negotiates capabilities.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	conn, err := dialUnixRetry(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("dial QMP: %w", err)
	}
	q := &QMP{
		conn:    conn.(*net.UnixConn),
		pending: map[uint64]chan qmpReply{},
		evWake:  make(chan struct{}),
		closed:  make(chan struct{}),
	}
	dec := json.NewDecoder(q.conn)
	if dl, ok := ctx.Deadline(); ok {
		_ = q.conn.SetReadDeadline(dl)
	}
	var greeting qmpMessage
	if err := dec.Decode(&greeting); err != nil || greeting.QMP == nil {
		q.conn.Close()
		return nil, fmt.Errorf("QMP greeting: %v", err)
	}
	_ = q.conn.SetReadDeadline(time.Time{})
	go q.read(dec)
	if _, err := q.Execute(ctx, "qmp_capabilities", nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) read(dec *json.Decoder) {
	var err error
	for {
		var m qmpMessage
		if err = dec.Decode(&m); err != nil {
			break
		}
		switch {
		case m.Event != "":
			ev := Event{Name: m.Event, Data: m.Data, At: time.Now()}
			if m.Timestamp != nil {
				ev.At = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			q.mu.Lock()
			q.events = append(q.events, ev)
			close(q.evWake)
			q.evWake = make(chan struct{})
			q.mu.Unlock()
		case m.ID != nil:
			q.mu.Lock()
			ch := q.pending[*m.ID]
			delete(q.pending, *m.ID)
			q.mu.Unlock()
			if ch != nil {
				ch <- qmpReply{Return: m.Return, Err: m.Error}
			}
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = errors.New("QMP connection closed")
	}
	q.mu.Lock()
	q.readErr = err
	for id, ch := range q.pending {
		close(ch)
		delete(q.pending, id)
	}
	close(q.closed)
	q.mu.Unlock()
}

// Execute runs one command and returns its "return" value.
func (q *QMP) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return q.execute(ctx, cmd, args, nil)
}

// GetFD passes f to QEMU with SCM_RIGHTS under name (QMP getfd). A later
// netdev_add {fd: name} takes it over.
func (q *QMP) GetFD(ctx context.Context, name string, f *os.File) error {
	_, err := q.execute(ctx, "getfd", map[string]any{"fdname": name}, syscall.UnixRights(int(f.Fd())))
	return err
}

func (q *QMP) execute(ctx context.Context, cmd string, args any, oob []byte) (json.RawMessage, error) {
	ch := make(chan qmpReply, 1)
	q.mu.Lock()
	if q.readErr != nil {
		err := q.readErr
		q.mu.Unlock()
		return nil, err
	}
	q.nextID++
	id := q.nextID
	q.pending[id] = ch
	q.mu.Unlock()

	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		q.forget(id)
		return nil, err
	}
	b = append(b, '\n')
	q.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = q.conn.SetWriteDeadline(dl)
	} else {
		_ = q.conn.SetWriteDeadline(time.Time{})
	}
	var n int
	if oob != nil {
		n, _, err = q.conn.WriteMsgUnix(b, oob, nil)
		if err == nil && n < len(b) {
			_, err = q.conn.Write(b[n:])
		}
	} else {
		_, err = q.conn.Write(b)
	}
	q.wmu.Unlock()
	if err != nil {
		q.forget(id)
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			q.mu.Lock()
			err := q.readErr
			q.mu.Unlock()
			return nil, fmt.Errorf("QMP %s: %w", cmd, err)
		}
		if r.Err != nil {
			return nil, fmt.Errorf("QMP %s: %w", cmd, r.Err)
		}
		return r.Return, nil
	case <-ctx.Done():
		q.forget(id)
		return nil, fmt.Errorf("QMP %s: %w", cmd, ctx.Err())
	}
}

func (q *QMP) forget(id uint64) {
	q.mu.Lock()
	delete(q.pending, id)
	q.mu.Unlock()
}

// EventMark returns a position in the event log: WaitEvent(ctx, mark, ...)
// sees only events after it. Take the mark before the command whose event
// you wait for, so that a fast event is not missed.
func (q *QMP) EventMark() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.events)
}

// WaitEvent waits for the first event named name after mark for which match
// (nil: any) returns true.
func (q *QMP) WaitEvent(ctx context.Context, mark int, name string, match func(data json.RawMessage) bool) (Event, error) {
	for last := false; ; {
		q.mu.Lock()
		for ; mark < len(q.events); mark++ {
			ev := q.events[mark]
			if ev.Name == name && (match == nil || match(ev.Data)) {
				q.mu.Unlock()
				return ev, nil
			}
		}
		wake, closed, rerr := q.evWake, q.closed, q.readErr
		q.mu.Unlock()
		if last {
			return Event{}, fmt.Errorf("waiting for QMP event %s: %v", name, rerr)
		}
		select {
		case <-wake:
		case <-closed:
			last = true // scan what came before the close once more
		case <-ctx.Done():
			return Event{}, fmt.Errorf("waiting for QMP event %s: %w", name, ctx.Err())
		}
	}
}

// Events returns a copy of every event received so far.
func (q *QMP) Events() []Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]Event(nil), q.events...)
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }

// DeviceDeleted matches the DEVICE_DELETED event of the device with this id
// (QEMU also sends one for the device's virtio backend, without "device").
func DeviceDeleted(id string) func(json.RawMessage) bool {
	return func(data json.RawMessage) bool {
		var d struct {
			Device string `json:"device"`
		}
		return json.Unmarshal(data, &d) == nil && d.Device == id
	}
}

// dialUnixRetry connects to a unix socket that QEMU creates a moment after it
// starts (QMP, the agent's chardev), retrying every 20 ms until ctx ends.
func dialUnixRetry(ctx context.Context, path string) (net.Conn, error) {
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return conn, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
