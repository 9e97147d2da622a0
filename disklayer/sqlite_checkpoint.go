package disklayer

import (
	"fmt"
	"sync"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/internal/store"
)

// checkpointBytes is how much committed data the WAL may hold before the
// background checkpointer is asked to copy it into the database file.
const checkpointBytes = 16 << 20

// checkpointer copies committed WAL frames into the database file on a
// connection and goroutine of its own, so that requests never wait for
// it. SQLite's automatic checkpoint would run inside the commit that
// crosses the threshold, on the request path, while holding the layer's
// lock: for 1 MiB writes that was a quarter of the server's time
// (measured with HIBDISK_CPUPROFILE under fio). A PASSIVE checkpoint
// takes no writer lock, so writes go on while it runs; the WAL restarts
// from its beginning at the first write after a complete checkpoint.
//
// Durability does not depend on it: a commit is durable once its WAL
// frames are synced (synchronous=FULL), checkpointed or not.
type checkpointer struct {
	conn *sqlite3.Conn
	kick chan struct{} // buffered 1: a pending request
	wg   sync.WaitGroup

	mu  sync.Mutex
	err error // the last checkpoint's failure, for Close
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
	c.wg.Add(1)
	go c.run()
	return c, nil
}

func (c *checkpointer) run() {
	defer c.wg.Done()
	for range c.kick {
		err := c.conn.Exec("PRAGMA wal_checkpoint(PASSIVE)")
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
	}
}

// request asks for a checkpoint without waiting for it; requests made
// while one is pending merge into it.
func (c *checkpointer) request() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// stop waits for a running checkpoint and closes the connection. The
// engine's connection, closed after it, checkpoints whatever is left.
func (c *checkpointer) stop() error {
	close(c.kick)
	c.wg.Wait()
	err := c.conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	return err
}
