package datastore

import (
	"errors"

	"github.com/hibdisk/hibdisk/diffdisk"
)

// OpenPath reaches the datastore of the layer chain whose top is the file
// at layerPath: through the process serving it (Dial) when one answers on
// its socket, since writing to a served layer from another process would
// fail the server's next guest write; else by opening the chain itself,
// read-only when readOnly is set.
//
// Closing the result closes the connection, or the Store and then the
// chain it opened; a close error is a failed final commit and matters.
func OpenPath(layerPath string, readOnly bool) (API, error) {
	if c, err := Dial(layerPath); err == nil {
		return c, nil
	}
	d, err := diffdisk.Open(layerPath, diffdisk.Options{ReadOnly: readOnly})
	if err != nil {
		return nil, err
	}
	s, err := Open(d, Options{})
	if err != nil {
		d.Close()
		return nil, err
	}
	return &chainStore{Store: s, chain: d}, nil
}

// chainStore is a Store that closes its chain too.
type chainStore struct {
	*Store
	chain *diffdisk.Disk
}

func (c *chainStore) Close() error {
	return errors.Join(c.Store.Close(), c.chain.Close())
}
