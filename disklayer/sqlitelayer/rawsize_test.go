package sqlitelayer

import (
	"testing"

	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
)

// The check rounds a raw parent's size as rawlayer opens it.
func TestRawSectorSizeIsRawlayers(t *testing.T) {
	if rawSectorSize != rawlayer.DefaultSectorSize {
		t.Fatalf("rawSectorSize %d, rawlayer.DefaultSectorSize %d: keep them equal", rawSectorSize, rawlayer.DefaultSectorSize)
	}
}
