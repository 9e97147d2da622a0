package sqlitelayer

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/internal/store"
)

// WAL bounds, in bytes of WAL frames since the WAL last restarted.
// Variables only so that tests can make checkpoints frequent
// (SetWALBoundsForTest).
var (
	// checkpointBytes is how much the WAL may hold before the background
	// checkpointer is asked to copy it into the database file.
	checkpointBytes int64 = 16 << 20
	// walLimitBytes is how large the WAL may grow before a commit waits
	// for the checkpointer to catch up, so that the next write
	// transaction starts the WAL over from its beginning.
	walLimitBytes int64 = 64 << 20
	// walKeepBytes is the journal_size_limit: a WAL file larger than this
	// is cut back to it when the WAL starts over. It is above what the
	// WAL usually reaches (walLimitBytes and a batch), so that the file
	// is not cut and regrown every time.
	walKeepBytes int64 = 2 * walLimitBytes
)

// checkpointer copies committed WAL frames into the database file on a
// connection and goroutine of its own, so that requests do not wait for
// it. SQLite's automatic checkpoint would run inside the commit that
// crosses the threshold, on the request path, while holding the layer's
// lock: for 1 MiB writes that was a quarter of the server's time
// (measured with HIBDISK_CPUPROFILE under fio). A PASSIVE checkpoint
// takes no writer lock, so writes go on while it runs.
//
// The WAL only starts over from its beginning when a write transaction
// begins with every frame already copied. Under sustained writes a
// background checkpoint never catches up with the writer, and the WAL
// grew without bound (3.5 GB for a 1 GiB disk after 16 s of fio): every
// page read that misses the cache then comes from the WAL, and the file
// is never cut back. So once the WAL passes walLimitBytes, the commit
// waits for a checkpoint that starts after it (catchUp); with no write
// transaction open that copies everything, and the next write restarts
// the WAL.
//
// Durability does not depend on it: a commit is durable once its WAL
// frames are synced (synchronous=FULL), checkpointed or not.
type checkpointer struct {
	conn *sqlite3.Conn
	// guard, when set, is the layer's direct reader: every checkpoint
	// holds it exclusively and tells it whether the file is complete.
	guard atomic.Pointer[direct]
	kick  chan struct{} // buffered 1: a pending request
	wg    sync.WaitGroup

	mu        sync.Mutex
	cond      sync.Cond
	requested uint64 // generation of the newest request
	done      uint64 // generation the last finished checkpoint served
	err       error  // the last checkpoint's failure, for Close
	stopped   bool   // stop closed kick
}

// startCheckpointer opens a second connection to path and starts the
// checkpointing goroutine. The engine's own connection must have
// wal_autocheckpoint=0.
func startCheckpointer(path string) (*checkpointer, error) {
	uri, err := store.FileURI(path, "rw")
	if err != nil {
		return nil, fmt.Errorf("open checkpoint connection: %w", err)
	}
	conn, err := sqlite3.OpenFlags(uri, sqlite3.OPEN_READWRITE|sqlite3.OPEN_URI)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint connection: %w", err)
	}
	// Every commit syncs the WAL; a checkpoint syncs the database file
	// before the WAL may be reused.
	if err := conn.Exec("PRAGMA synchronous=FULL; PRAGMA cache_size=-1024"); err != nil {
		conn.Close()
		return nil, fmt.Errorf("set up checkpoint connection: %w", err)
	}
	c := &checkpointer{conn: conn, kick: make(chan struct{}, 1)}
	c.cond.L = &c.mu
	c.wg.Add(1)
	go c.run()
	return c, nil
}

func (c *checkpointer) run() {
	defer c.wg.Done()
	for range c.kick {
		c.mu.Lock()
		gen := c.requested
		c.mu.Unlock()
		err := c.checkpoint()
		c.mu.Lock()
		c.err = err
		c.done = gen
		c.cond.Broadcast()
		c.mu.Unlock()
	}
}

// request asks for a checkpoint without waiting for it; requests made
// while one is pending merge into it. It returns the request's
// generation.
func (c *checkpointer) request() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requested++
	if !c.stopped { // a direct read may ask after Close (readDirect)
		select {
		case c.kick <- struct{}{}:
		default:
		}
	}
	return c.requested
}

// catchUp asks for a checkpoint and waits until one that started after
// the call has finished.
func (c *checkpointer) catchUp() {
	gen := c.request()
	c.mu.Lock()
	for c.done < gen {
		c.cond.Wait()
	}
	c.mu.Unlock()
}

// stop waits for a running checkpoint and closes the connection. The
// engine's connection, closed after it, checkpoints whatever is left.
func (c *checkpointer) stop() error {
	c.mu.Lock()
	c.stopped = true
	close(c.kick)
	c.mu.Unlock()
	c.wg.Wait()
	err := c.conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	return err
}

// checkpoint copies what it can of the WAL into the file (PASSIVE).
func (c *checkpointer) checkpoint() error {
	d := c.guard.Load()
	if d == nil {
		_, _, err := c.conn.WALCheckpoint("main", sqlite3.CHECKPOINT_PASSIVE)
		return err
	}
	before := d.beginCheckpoint()
	nLog, nCkpt, err := c.conn.WALCheckpoint("main", sqlite3.CHECKPOINT_PASSIVE)
	d.endCheckpoint(before, err == nil && nLog == nCkpt)
	return err
}
