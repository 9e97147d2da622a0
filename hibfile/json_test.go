package hibfile_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/hibfile"
)

func export(t *testing.T, path string) []byte {
	t.Helper()
	v := latestView(t, path)
	var b bytes.Buffer
	if err := hibfile.Export(&b, v); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestJSONRoundTripIsLossless(t *testing.T) {
	dir := t.TempDir()
	a := newBase(t, dir, "a.db")
	s, _ := synthetic(3, 6, 4, 2, 5, 3, 6)
	// Unknown registers, a physical address, a zero page inside a range:
	// all must survive.
	s.Processes[1].RegistersSize = 0
	s.Processes[2].Mappings[1].PhysicalAddr = ptr(int64(0x1234000))
	hibfile.Layout(s, nil, 4096, func(_ int64, m hibfile.Mapping) bool { return m.Size > 4096 })
	img := &hibfile.MemoryImage{}
	for i, p := range s.Processes {
		if p.RegistersOffset != nil {
			img.Put(*p.RegistersOffset, bytes.Repeat([]byte{byte(i + 1)}, int(p.RegistersSize)))
		}
		for j, m := range p.Mappings {
			if m.BlobOffset != nil && j == 0 {
				data := bytes.Repeat([]byte{byte(j + 7)}, int(m.Size))
				clear(data[4096:8192]) // a zero page inside a range
				img.Put(*m.BlobOffset, data)
			}
		}
	}
	mustSave(t, a, s, img)
	first := export(t, a)

	b := newBase(t, dir, "b.db")
	if _, err := hibfile.Import(b, bytes.NewReader(first)); err != nil {
		t.Fatal(err)
	}
	second := export(t, b)
	if !bytes.Equal(first, second) {
		t.Fatalf("export → import → export differs:\n%s", cmp.Diff(string(first), string(second)))
	}
	sa, err := hibfile.Latest(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := hibfile.Latest(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(sa, sb, cmpopts.IgnoreFields(hibfile.Snapshot{}, "ID", "LayerUUID")); diff != "" {
		t.Errorf("imported snapshot differs:\n%s", diff)
	}
	// The blobs agree byte for byte.
	ca, _ := hibfile.Open(a)
	defer ca.Close()
	cb, _ := hibfile.Open(b)
	defer cb.Close()
	va, _ := ca.Latest()
	vb, _ := cb.Latest()
	d, err := hibfile.Compare(va, vb)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Empty() || d.PagesChanged != 0 {
		t.Errorf("Compare(original, imported) = %+v, want no change", d)
	}
}

func TestImportRejects(t *testing.T) {
	base := newBase(t, t.TempDir(), "x.db")
	for name, doc := range map[string]string{
		"not JSON":      "{",
		"wrong format":  `{"format": "other", "version": 1, "snapshot": {}}`,
		"unknown field": `{"format": "hibdisk-hibernate", "version": 1, "snapshot": {"bogus": 1}}`,
		"no snapshot":   `{"format": "hibdisk-hibernate", "version": 1}`,
		"blob outside":  `{"format": "hibdisk-hibernate", "version": 1, "snapshot": {"timestamp": "2025-01-01T00:00:00Z", "status": "complete", "processes": []}, "blob": [{"offset": 0, "data": "AQ=="}]}`,
		"bad status":    `{"format": "hibdisk-hibernate", "version": 1, "snapshot": {"timestamp": "2025-01-01T00:00:00Z", "status": "weird", "processes": []}}`,
		"bad page size": `{"format": "hibdisk-hibernate", "version": 1, "snapshot": {"timestamp": "2025-01-01T00:00:00Z", "status": "complete", "processes": [{"pid": 1, "name": "a", "state": "s", "mappings": [{"virtual_addr": 0, "size": 4096, "page_size": 3000}]}]}}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := hibfile.Import(base, strings.NewReader(doc))
			if !errors.Is(err, disklayer.ErrInvalid) {
				t.Errorf("Import = %v, want ErrInvalid", err)
			}
		})
	}
	if _, err := hibfile.Latest(base); !errors.Is(err, hibfile.ErrNoSnapshot) {
		t.Errorf("after rejected imports: %v, want ErrNoSnapshot", err)
	}
}
