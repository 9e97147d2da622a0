package sqlitelayer_test

import (
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/store/storetest"
)

// generationOf reads the committed generation from the file, as a child's
// chain would when it opens the layer.
func generationOf(t *testing.T, path string) int64 {
	t.Helper()
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return f.Info().Generation
}

// TestGenerationCountsContentChanges: every committed transaction that
// changes what the layer shows moves its generation once, whoever makes
// it (the engine, or an SQL client through the triggers); naming or
// marking the layer does not.
func TestGenerationCountsContentChanges(t *testing.T) {
	path := newLayerPath(t, "g.hibdisk")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 4 << 20})
	gen := f.Info().Generation
	if gen != 1 {
		t.Fatalf("new layer at generation %d, want 1", gen)
	}
	step := func(what string, change func(), moves bool) {
		t.Helper()
		change()
		got := f.Info().Generation
		want := gen
		if moves {
			want++
		}
		if got != want {
			t.Errorf("%s: generation %d -> %d, want %d", what, gen, got, want)
		}
		gen = got
	}
	flush := func() {
		t.Helper()
		if err := f.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// 256 sectors in one batch: one bump, not one per row.
	step("a 1 MiB write and flush", func() { mustWrite(t, f, fill(1<<20, 7), 0); flush() }, true)
	step("a flush with nothing written", flush, false)
	step("a zero and flush", func() {
		if err := f.Zero(0, 8192); err != nil {
			t.Fatal(err)
		}
		flush()
	}, true)
	step("a hibernate write", func() { mustWrite(t, f.Hibernate(), fill(4096, 3), 1<<30); flush() }, true)
	step("set label", func() {
		if err := f.SetLabel("golden"); err != nil {
			t.Fatal(err)
		}
	}, false)
	step("resize", func() {
		if err := f.Resize(8 << 20); err != nil {
			t.Fatal(err)
		}
	}, true)
	step("set read-only", func() {
		if err := f.SetReadOnly(true); err != nil {
			t.Fatal(err)
		}
	}, false)
	step("clear read-only", func() {
		if err := f.SetReadOnly(false); err != nil {
			t.Fatal(err)
		}
	}, false)
	step("write, then label in the same batch", func() {
		mustWrite(t, f, fill(4096, 9), 4096)
		if err := f.SetLabel("golden-2"); err != nil {
			t.Fatal(err)
		}
	}, true)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := generationOf(t, path); got != gen {
		t.Fatalf("generation %d after reopen, want %d as committed", got, gen)
	}

	// An SQL client outside hibdisk moves it through the triggers.
	for _, sql := range []string{
		"UPDATE sectors SET data = randomblob(4096) WHERE sector = 1",
		"DELETE FROM sectors WHERE sector = 1",
		"INSERT INTO sectors (sector, data) VALUES (500, randomblob(4096))",
		"INSERT INTO hibernate_blocks (block, data) VALUES (5, randomblob(4096))",
		"UPDATE layer SET disk_size = 4194304",
	} {
		storetest.Exec(t, path, sql)
		got := generationOf(t, path)
		if got <= gen {
			t.Errorf("%s: generation %d -> %d, want it to move", sql, gen, got)
		}
		gen = got
	}
	storetest.Exec(t, path, "UPDATE layer SET label = 'x'")
	if got := generationOf(t, path); got != gen {
		t.Errorf("an SQL label change moved the generation %d -> %d", gen, got)
	}
}

// TestAbsorbRecordsParentGeneration: committing a child into its parent
// changes the parent, and the child's reference follows, so the child
// still opens over it.
func TestAbsorbRecordsParentGeneration(t *testing.T) {
	dir := t.TempDir()
	ppath := checkedLayer(t, dir+"/p.hibdisk")
	p := createLayer(t, ppath, sqlitelayer.CreateOptions{Size: 1 << 20})
	pinfo := p.Info()
	c := createLayer(t, checkedLayer(t, dir+"/c.hibdisk"), sqlitelayer.CreateOptions{Size: 1 << 20, Parent: &disklayer.ParentRef{
		Path: "p.hibdisk", Format: disklayer.FormatHibdisk, UUID: pinfo.UUID, Size: pinfo.DiskSize, Generation: pinfo.Generation,
	}})
	defer c.Close()
	defer p.Close()
	mustWrite(t, c, fill(4096, 2), 0)
	if err := p.Absorb(c); err != nil {
		t.Fatal(err)
	}
	if pg, cg := p.Info().Generation, c.Info().Parent.Generation; pg == pinfo.Generation || cg != pg {
		t.Errorf("after Absorb: parent at generation %d (was %d), child records %d; want a new generation, recorded", pg, pinfo.Generation, cg)
	}
}
