package datastore

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hibdisk/hibdisk/disklayer"
)

// API is what a Store offers, in process (*Store) or through the process
// serving the layer (*Client).
type API interface {
	Publish(e Entry, flags Flags) error
	Retrieve(key string, typ Type, owner string) (Entry, error)
	RetrieveLabelName(num uint32, owner string) (string, error)
	RetrieveMap(key, owner string, buf []byte, snapshot int) (n, length int, err error)
	Delete(key string, typ Type, owner string) error
	SnapshotMap(key, owner string) (int, error)
	List(owner string) ([]Entry, error)
	Subscribe(owner, pattern string, types []Type, flags Flags) error
	Subscription(owner string) (Subscription, error)
	Unsubscribe(owner string) error
	Check(owner string) (Change, bool, error)
	Version() (int64, error)
	Wait(ctx context.Context, v int64) error
	Close() error
}

var (
	_ API = (*Store)(nil)
	_ API = (*Client)(nil)
)

// SocketPath is where the process serving the layer at layerPath listens
// for datastore requests: the layer's name with extension .ds.sock.
func SocketPath(layerPath string) string {
	return strings.TrimSuffix(layerPath, filepath.Ext(layerPath)) + ".ds.sock"
}

// The protocol: one JSON request per line, answered by one JSON response
// line, in order, on a unix socket.
type request struct {
	Op       string `json:"op"`
	Entry    *Entry `json:"entry,omitempty"`
	Flags    Flags  `json:"flags,omitempty"`
	Key      string `json:"key,omitempty"`
	Type     Type   `json:"type,omitempty"`
	Owner    string `json:"owner,omitempty"`
	Number   uint32 `json:"number,omitempty"`
	Snapshot int    `json:"snapshot,omitempty"`
	BufLen   int    `json:"buf_len,omitempty"`
	Pattern  string `json:"pattern,omitempty"`
	Types    []Type `json:"types,omitempty"`
	Version  int64  `json:"version,omitempty"`
	WaitMS   int64  `json:"wait_ms,omitempty"`
}

type response struct {
	Err     string        `json:"err,omitempty"`
	Code    string        `json:"code,omitempty"`
	Entry   *Entry        `json:"entry,omitempty"`
	Entries []Entry       `json:"entries,omitempty"`
	Name    string        `json:"name,omitempty"`
	Data    []byte        `json:"data,omitempty"`
	Length  int           `json:"length,omitempty"`
	Number  int           `json:"number,omitempty"`
	Change  *Change       `json:"change,omitempty"`
	OK      bool          `json:"ok,omitempty"`
	Sub     *Subscription `json:"sub,omitempty"`
	Version int64         `json:"version,omitempty"`
}

// errorCodes carry sentinel errors over the socket.
var errorCodes = []struct {
	code string
	err  error
}{
	{"not_found", ErrNotFound}, {"exists", ErrExists}, {"permission", ErrPermission},
	{"too_small", ErrTooSmall}, {"invalid", disklayer.ErrInvalid}, {"out_of_range", disklayer.ErrOutOfRange},
	{"read_only", disklayer.ErrReadOnly}, {"closed", disklayer.ErrClosed},
}

// remoteError is an error that happened in the serving process: its text,
// and the sentinel it wrapped.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// maxWait bounds one wait request, so that a client's cancelled wait
// ends soon: the server does not see the client give up.
const maxWait = 250 * time.Millisecond

// Serve answers datastore requests on l with s until ctx ends or l
// fails; then it closes l and every connection, and returns nil if ctx
// ended.
func Serve(ctx context.Context, l net.Listener, s *Store) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("datastore server: %w", err)
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveConn(ctx, c, s)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			c.Close()
		}()
	}
}

func serveConn(ctx context.Context, c net.Conn, s *Store) {
	dec := json.NewDecoder(bufio.NewReader(c))
	enc := json.NewEncoder(c)
	for {
		var req request
		if err := dec.Decode(&req); err != nil {
			return
		}
		resp := handle(ctx, s, &req)
		if err := enc.Encode(resp); err != nil {
			return
		}
	}
}

func handle(ctx context.Context, s *Store, req *request) (resp response) {
	var err error
	switch req.Op {
	case "publish":
		if req.Entry == nil {
			err = fmt.Errorf("publish: no entry: %w", disklayer.ErrInvalid)
			break
		}
		err = s.Publish(*req.Entry, req.Flags)
	case "retrieve":
		var e Entry
		e, err = s.Retrieve(req.Key, req.Type, req.Owner)
		resp.Entry = &e
	case "retrieve_label_name":
		resp.Name, err = s.RetrieveLabelName(req.Number, req.Owner)
	case "retrieve_map":
		buf := make([]byte, min(max(req.BufLen, 0), MaxValueLen))
		var n int
		n, resp.Length, err = s.RetrieveMap(req.Key, req.Owner, buf, req.Snapshot)
		resp.Data = buf[:n]
	case "delete":
		err = s.Delete(req.Key, req.Type, req.Owner)
	case "snapshot_map":
		resp.Number, err = s.SnapshotMap(req.Key, req.Owner)
	case "list":
		resp.Entries, err = s.List(req.Owner)
	case "subscribe":
		err = s.Subscribe(req.Owner, req.Pattern, req.Types, req.Flags)
	case "subscription":
		var sub Subscription
		sub, err = s.Subscription(req.Owner)
		resp.Sub = &sub
	case "unsubscribe":
		err = s.Unsubscribe(req.Owner)
	case "check":
		var c Change
		c, resp.OK, err = s.Check(req.Owner)
		resp.Change = &c
	case "version":
		resp.Version, err = s.Version()
	case "wait":
		wctx, cancel := context.WithTimeout(ctx, min(time.Duration(req.WaitMS)*time.Millisecond, maxWait))
		err = s.Wait(wctx, req.Version)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			err = nil
		}
		if err == nil {
			resp.Version, err = s.Version()
		}
	default:
		err = fmt.Errorf("datastore request %q: unknown operation: %w", req.Op, disklayer.ErrInvalid)
	}
	if err != nil {
		resp = response{Err: err.Error()}
		for _, c := range errorCodes {
			if errors.Is(err, c.err) {
				resp.Code = c.code
				break
			}
		}
	}
	return resp
}

// Client reaches the datastore of a layer through the process serving
// it. Its methods are safe for concurrent use; requests are answered one
// at a time.
type Client struct {
	path string
	mu   sync.Mutex
	conn net.Conn
	dec  *json.Decoder
	enc  *json.Encoder
}

// Dial connects to the datastore server of the layer at layerPath
// (SocketPath). It fails when no process serves the layer.
func Dial(layerPath string) (*Client, error) {
	sock := SocketPath(layerPath)
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("datastore of %q: %w", layerPath, err)
	}
	return &Client{path: layerPath, conn: conn, dec: json.NewDecoder(bufio.NewReader(conn)), enc: json.NewEncoder(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) call(req request) (response, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.enc.Encode(req); err != nil {
		return response{}, fmt.Errorf("datastore %s of %q: send: %w", req.Op, c.path, err)
	}
	var resp response
	if err := c.dec.Decode(&resp); err != nil {
		return response{}, fmt.Errorf("datastore %s of %q: receive: %w", req.Op, c.path, err)
	}
	if resp.Err != "" {
		e := &remoteError{msg: resp.Err}
		for _, ec := range errorCodes {
			if ec.code == resp.Code {
				e.sentinel = ec.err
			}
		}
		return resp, e
	}
	return resp, nil
}

// Publish is Store.Publish.
func (c *Client) Publish(e Entry, flags Flags) error {
	_, err := c.call(request{Op: "publish", Entry: &e, Flags: flags})
	return err
}

// Retrieve is Store.Retrieve.
func (c *Client) Retrieve(key string, typ Type, owner string) (Entry, error) {
	resp, err := c.call(request{Op: "retrieve", Key: key, Type: typ, Owner: owner})
	if err != nil || resp.Entry == nil {
		return Entry{}, err
	}
	return *resp.Entry, nil
}

// RetrieveLabelName is Store.RetrieveLabelName.
func (c *Client) RetrieveLabelName(num uint32, owner string) (string, error) {
	resp, err := c.call(request{Op: "retrieve_label_name", Number: num, Owner: owner})
	return resp.Name, err
}

// RetrieveMap is Store.RetrieveMap.
func (c *Client) RetrieveMap(key, owner string, buf []byte, snapshot int) (n, length int, err error) {
	resp, err := c.call(request{Op: "retrieve_map", Key: key, Owner: owner, BufLen: len(buf), Snapshot: snapshot})
	if err != nil {
		return 0, 0, err
	}
	return copy(buf, resp.Data), resp.Length, nil
}

// Delete is Store.Delete.
func (c *Client) Delete(key string, typ Type, owner string) error {
	_, err := c.call(request{Op: "delete", Key: key, Type: typ, Owner: owner})
	return err
}

// SnapshotMap is Store.SnapshotMap.
func (c *Client) SnapshotMap(key, owner string) (int, error) {
	resp, err := c.call(request{Op: "snapshot_map", Key: key, Owner: owner})
	return resp.Number, err
}

// List is Store.List.
func (c *Client) List(owner string) ([]Entry, error) {
	resp, err := c.call(request{Op: "list", Owner: owner})
	return resp.Entries, err
}

// Subscribe is Store.Subscribe.
func (c *Client) Subscribe(owner, pattern string, types []Type, flags Flags) error {
	_, err := c.call(request{Op: "subscribe", Owner: owner, Pattern: pattern, Types: types, Flags: flags})
	return err
}

// Subscription is Store.Subscription.
func (c *Client) Subscription(owner string) (Subscription, error) {
	resp, err := c.call(request{Op: "subscription", Owner: owner})
	if err != nil || resp.Sub == nil {
		return Subscription{}, err
	}
	return *resp.Sub, nil
}

// Unsubscribe is Store.Unsubscribe.
func (c *Client) Unsubscribe(owner string) error {
	_, err := c.call(request{Op: "unsubscribe", Owner: owner})
	return err
}

// Check is Store.Check.
func (c *Client) Check(owner string) (Change, bool, error) {
	resp, err := c.call(request{Op: "check", Owner: owner})
	if err != nil || resp.Change == nil {
		return Change{}, false, err
	}
	return *resp.Change, resp.OK, nil
}

// Version is Store.Version.
func (c *Client) Version() (int64, error) {
	resp, err := c.call(request{Op: "version"})
	return resp.Version, err
}

// Wait is Store.Wait: the server waits in slices of at most maxWait.
func (c *Client) Wait(ctx context.Context, v int64) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		wait := maxWait
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl))
		}
		resp, err := c.call(request{Op: "wait", Version: v, WaitMS: max(wait.Milliseconds(), 1)})
		if err != nil {
			return err
		}
		if resp.Version != v {
			return nil
		}
	}
}
