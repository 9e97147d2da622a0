package datastore_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hibdisk/hibdisk/datastore"
	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
)

func TestPublishRetrieveEachType(t *testing.T) {
	s, d, _ := open(t, newBase(t), diffdisk.Options{})
	must(t, s.PublishU32("count", 42, "agent", 0))
	must(t, s.PublishString("name", "hello", "agent", 0))
	must(t, s.PublishMem("blob", []byte{1, 2, 3, 0, 5}, "agent", 0))
	must(t, s.PublishLabel("net", 7, "rs", 0))
	disk := bytes.Repeat([]byte("d"), 4096)
	if _, err := d.WriteAt(disk, 8192); err != nil {
		t.Fatal(err)
	}
	must(t, s.PublishMap("ring", datastore.MapRange{Source: datastore.SourceDisk, Offset: 8190, Length: 10}, "agent", 0))

	if v, err := s.RetrieveU32("count", "x"); err != nil || v != 42 {
		t.Errorf("RetrieveU32 = %d, %v", v, err)
	}
	if v, err := s.RetrieveString("name", "x", 5); err != nil || v != "hello" {
		t.Errorf("RetrieveString = %q, %v", v, err)
	}
	buf := make([]byte, 16)
	if n, total, err := s.RetrieveMem("blob", "x", buf); err != nil || n != 5 || total != 5 || !bytes.Equal(buf[:n], []byte{1, 2, 3, 0, 5}) {
		t.Errorf("RetrieveMem = %d, %d, %v: % x", n, total, err, buf[:n])
	}
	if v, err := s.RetrieveLabel("net", "x"); err != nil || v != 7 {
		t.Errorf("RetrieveLabel = %d, %v", v, err)
	}
	if v, err := s.RetrieveLabelName(7, "x"); err != nil || v != "net" {
		t.Errorf("RetrieveLabelName = %q, %v", v, err)
	}
	if n, total, err := s.RetrieveMap("ring", "x", buf, 0); err != nil || n != 10 || total != 10 || string(buf[:n]) != "\x00\x00dddddddd" {
		t.Errorf("RetrieveMap = %d, %d, %v: %q", n, total, err, buf[:n])
	}

	// The same key exists once per type.
	must(t, s.PublishU32("name", 1, "agent", 0))
	if v, err := s.RetrieveString("name", "x", 100); err != nil || v != "hello" {
		t.Errorf("string after a u32 of the same key = %q, %v", v, err)
	}
	list, err := s.List("x")
	must(t, err)
	var got []string
	for _, e := range list {
		got = append(got, e.Key+"/"+string(e.Type))
	}
	if want := []string{"blob/mem", "count/u32", "name/u32", "name/string", "net/label", "ring/map"}; !cmp.Equal(got, want) {
		t.Errorf("List = %v, want %v", got, want)
	}
}

func TestRetrieveBounds(t *testing.T) {
	s := mustOpen(t, newBase(t))
	must(t, s.PublishString("s", "twelve bytes", "o", 0))
	_, err := s.RetrieveString("s", "o", 11)
	wantErr(t, "string longer than the bound", err, datastore.ErrTooSmall)
	if v, err := s.RetrieveString("s", "o", 12); err != nil || v != "twelve bytes" {
		t.Errorf("string at the bound = %q, %v", v, err)
	}
	must(t, s.PublishMem("m", []byte("0123456789"), "o", 0))
	buf := make([]byte, 4)
	n, total, err := s.RetrieveMem("m", "o", buf)
	if err != nil || n != 4 || total != 10 || string(buf) != "0123" {
		t.Errorf("partial mem retrieve = %d, %d, %v, %q", n, total, err, buf)
	}
	_, err = s.Retrieve("nothing", datastore.U32, "o")
	wantErr(t, "retrieve a missing entry", err, datastore.ErrNotFound)
	_, err = s.Retrieve("s", datastore.U32, "o")
	wantErr(t, "retrieve a key of another type", err, datastore.ErrNotFound)
}

func TestPublishOverwrite(t *testing.T) {
	s, d, _ := open(t, newBase(t), diffdisk.Options{})
	must(t, s.PublishU32("k", 1, "a", 0))
	wantErr(t, "publish an existing key without overwrite", s.PublishU32("k", 2, "a", 0), datastore.ErrExists)
	if v, _ := s.RetrieveU32("k", "a"); v != 1 {
		t.Errorf("refused publish changed the value to %d", v)
	}
	must(t, s.PublishU32("k", 2, "b", datastore.Overwrite))
	e, err := s.Retrieve("k", datastore.U32, "")
	if err != nil || e.U32 != 2 || e.Owner != "b" {
		t.Errorf("after overwrite: %+v, %v (want value 2, owner b)", e, err)
	}
	must(t, s.PublishString("str", "a", "a", 0))
	must(t, s.PublishString("str", "bb", "a", datastore.Overwrite))
	must(t, s.PublishMem("mem", []byte{1}, "a", 0))
	wantErr(t, "publish an existing mem", s.PublishMem("mem", []byte{2}, "a", 0), datastore.ErrExists)
	must(t, s.PublishMem("mem", []byte{3}, "a", datastore.Overwrite))

	r := datastore.MapRange{Source: datastore.SourceDisk, Offset: 0, Length: 512}
	must(t, s.PublishMap("map", r, "a", 0))
	wantErr(t, "overwrite a MAP", s.PublishMap("map", r, "a", datastore.Overwrite), datastore.ErrExists)

	for _, bad := range []datastore.MapRange{
		{Source: datastore.SourceDisk, Offset: d.Size() - 10, Length: 20},
		{Source: datastore.SourceDisk, Offset: -1, Length: 1},
	} {
		wantErr(t, "publish a MAP range outside the disk", s.PublishMap("bad", bad, "a", 0), disklayer.ErrOutOfRange)
	}
	for _, bad := range []datastore.MapRange{
		{Source: datastore.SourceDisk, Offset: 0, Length: 0},
		{Source: "tape", Offset: 0, Length: 1},
	} {
		wantErr(t, "publish a bad MAP range", s.PublishMap("bad", bad, "a", 0), disklayer.ErrInvalid)
	}
	wantErr(t, "empty key", s.PublishU32("", 1, "a", 0), disklayer.ErrInvalid)
	wantErr(t, "long key", s.PublishU32(strings.Repeat("k", datastore.MaxKeyLen+1), 1, "a", 0), disklayer.ErrInvalid)
	must(t, s.PublishU32(strings.Repeat("k", datastore.MaxKeyLen), 1, "a", 0))
	wantErr(t, "unknown type", s.Publish(datastore.Entry{Key: "x", Type: "float"}, 0), disklayer.ErrInvalid)
}

func TestDelete(t *testing.T) {
	s := mustOpen(t, newBase(t))
	wantErr(t, "delete a missing entry", s.Delete("k", datastore.U32, "a"), datastore.ErrNotFound)
	must(t, s.PublishU32("k", 1, "a", 0))
	wantErr(t, "delete another owner's entry", s.Delete("k", datastore.U32, "b"), datastore.ErrPermission)
	must(t, s.Delete("k", datastore.U32, "a"))
	_, err := s.RetrieveU32("k", "a")
	wantErr(t, "retrieve a deleted entry", err, datastore.ErrNotFound)
	wantErr(t, "delete twice", s.Delete("k", datastore.U32, "a"), datastore.ErrNotFound)
	// Publishing again after a delete needs no overwrite.
	must(t, s.PublishU32("k", 3, "b", 0))
	if v, err := s.RetrieveU32("k", "b"); err != nil || v != 3 {
		t.Errorf("republished = %d, %v", v, err)
	}
}

func TestLabels(t *testing.T) {
	s := mustOpen(t, newBase(t))
	must(t, s.PublishLabel("tty", 1, "rs", 0))
	must(t, s.PublishLabel("net", 2, "rs", 0))
	wantErr(t, "duplicate label number", s.PublishLabel("disk", 2, "rs", 0), datastore.ErrExists)
	wantErr(t, "duplicate label name", s.PublishLabel("net", 3, "rs", 0), datastore.ErrExists)
	wantErr(t, "overwrite a name with a number another label holds", s.PublishLabel("net", 1, "rs", datastore.Overwrite), datastore.ErrExists)

	// Overwrite by name: the label gets a new number.
	must(t, s.PublishLabel("net", 5, "rs", datastore.Overwrite))
	if _, err := s.RetrieveLabelName(2, ""); err == nil {
		t.Error("old number 2 still names a label")
	}
	// Overwrite by number: the label holding it is renamed.
	must(t, s.PublishLabel("console", 1, "rs", datastore.Overwrite))
	if name, err := s.RetrieveLabelName(1, ""); err != nil || name != "console" {
		t.Errorf("number 1 names %q, %v; want console", name, err)
	}
	_, err := s.RetrieveLabel("tty", "")
	wantErr(t, "renamed label's old name", err, datastore.ErrNotFound)
	_, err = s.RetrieveLabelName(99, "")
	wantErr(t, "unknown label number", err, datastore.ErrNotFound)
	must(t, s.Delete("console", datastore.Label, "rs"))
	must(t, s.PublishLabel("tty", 1, "rs", 0))
}

func TestMapSnapshots(t *testing.T) {
	var h *diffdisk.Disk
	s, _, _ := openWith(t, newBase(t), diffdisk.Options{}, func(d *diffdisk.Disk) *diffdisk.Disk {
		var err error
		h, err = d.Hibernate()
		must(t, err)
		return h
	})
	write := func(w interface {
		WriteAt([]byte, int64) (int, error)
	}, b byte) {
		if _, err := w.WriteAt(bytes.Repeat([]byte{b}, 4096), 0); err != nil {
			t.Fatal(err)
		}
	}
	write(h, 'a')
	must(t, s.PublishMap("ram", datastore.MapRange{Source: datastore.SourceHibernate, Offset: 100, Length: 4}, "vmm", 0))
	n1, err := s.SnapshotMap("ram", "vmm")
	must(t, err)
	write(h, 'b')
	n2, err := s.SnapshotMap("ram", "vmm")
	must(t, err)
	write(h, 'c')
	if n1 != 1 || n2 != 2 {
		t.Errorf("snapshot numbers %d, %d; want 1, 2", n1, n2)
	}
	buf := make([]byte, 4)
	for snap, want := range map[int]string{0: "cccc", 1: "aaaa", 2: "bbbb"} {
		if n, _, err := s.RetrieveMap("ram", "x", buf, snap); err != nil || string(buf[:n]) != want {
			t.Errorf("snapshot %d = %q, %v; want %q", snap, buf[:n], err, want)
		}
	}
	_, _, err = s.RetrieveMap("ram", "x", buf, 3)
	wantErr(t, "missing snapshot", err, datastore.ErrNotFound)
	e, err := s.Retrieve("ram", datastore.Map, "x")
	if err != nil || e.Snapshots != 2 {
		t.Errorf("entry = %+v, %v; want 2 snapshots", e, err)
	}
	// Deleting the MAP deletes its snapshots; a new MAP numbers from 1.
	must(t, s.Delete("ram", datastore.Map, "vmm"))
	_, err = s.SnapshotMap("ram", "vmm")
	wantErr(t, "snapshot a deleted map", err, datastore.ErrNotFound)
	must(t, s.PublishMap("ram", datastore.MapRange{Source: datastore.SourceDisk, Offset: 0, Length: 4}, "vmm", 0))
	_, _, err = s.RetrieveMap("ram", "x", buf, 1)
	wantErr(t, "snapshot of a deleted map", err, datastore.ErrNotFound)
	if n, err := s.SnapshotMap("ram", "vmm"); err != nil || n != 1 {
		t.Errorf("first snapshot of the new map = %d, %v", n, err)
	}
}

func TestPrivate(t *testing.T) {
	s := mustOpen(t, newBase(t))
	must(t, s.PublishString("secret", "s3", "alice", datastore.Private))
	must(t, s.PublishMap("pmap", datastore.MapRange{Source: datastore.SourceDisk, Length: 8}, "alice", datastore.Private))

	_, err := s.RetrieveString("secret", "bob", 100)
	wantErr(t, "retrieve another owner's private entry", err, datastore.ErrPermission)
	wantErr(t, "overwrite another owner's private entry", s.PublishString("secret", "x", "bob", datastore.Overwrite), datastore.ErrPermission)
	_, err = s.SnapshotMap("pmap", "bob")
	wantErr(t, "snapshot another owner's private map", err, datastore.ErrPermission)
	_, _, err = s.RetrieveMap("pmap", "bob", nil, 0)
	wantErr(t, "read another owner's private map", err, datastore.ErrPermission)
	wantErr(t, "delete another owner's private entry", s.Delete("secret", datastore.String, "bob"), datastore.ErrPermission)

	if v, err := s.RetrieveString("secret", "alice", 100); err != nil || v != "s3" {
		t.Errorf("owner retrieves %q, %v", v, err)
	}
	_, err = s.SnapshotMap("pmap", "alice")
	must(t, err)
	must(t, s.PublishString("secret", "s4", "alice", datastore.Overwrite|datastore.Private))

	list, err := s.List("bob")
	must(t, err)
	for _, e := range list {
		if e.Key == "secret" && (e.String != "" || !e.Private) {
			t.Errorf("listing for another owner shows %+v", e)
		}
	}

	// Subscribing does not reveal another owner's private entries.
	must(t, s.Subscribe("bob", ".*", nil, datastore.Initial))
	must(t, s.Subscribe("alice", ".*", nil, datastore.Initial))
	must(t, s.PublishString("secret", "s5", "alice", datastore.Overwrite|datastore.Private))
	if got := drain(t, s, "bob"); len(got) != 0 {
		t.Errorf("bob was told of %+v", got)
	}
	if got := drain(t, s, "alice"); len(got) != 2 {
		t.Errorf("alice was told of %+v, want both her entries once", got)
	}
}

func TestChain(t *testing.T) {
	base := newBase(t)
	{
		s, _, closeBase := open(t, base, diffdisk.Options{})
		must(t, s.PublishU32("a", 1, "o", 0))
		must(t, s.PublishU32("b", 2, "o", 0))
		must(t, s.PublishLabel("l", 10, "o", 0))
		must(t, s.PublishMap("m", datastore.MapRange{Source: datastore.SourceDisk, Length: 4}, "o", 0))
		_, err := s.SnapshotMap("m", "o")
		must(t, err)
		closeBase()
	}
	diff := newDiff(t, base, "diff.hib")
	s := mustOpen(t, diff)
	if v, err := s.RetrieveU32("a", "o"); err != nil || v != 1 {
		t.Errorf("lower entry through the chain = %d, %v", v, err)
	}
	must(t, s.PublishU32("a", 11, "o", datastore.Overwrite))
	must(t, s.Delete("b", datastore.U32, "o"))
	wantErr(t, "label number of a lower layer", s.PublishLabel("l2", 10, "o", 0), datastore.ErrExists)
	must(t, s.Delete("m", datastore.Map, "o"))
	_, _, err := s.RetrieveMap("m", "o", nil, 1)
	wantErr(t, "snapshot of a map deleted above", err, datastore.ErrNotFound)
	must(t, s.PublishMap("m", datastore.MapRange{Source: datastore.SourceDisk, Length: 4}, "o", 0))
	_, _, err = s.RetrieveMap("m", "o", nil, 1)
	wantErr(t, "lower snapshot of a republished map", err, datastore.ErrNotFound)

	if v, err := s.RetrieveU32("a", "o"); err != nil || v != 11 {
		t.Errorf("overridden entry = %d, %v", v, err)
	}
	_, err = s.RetrieveU32("b", "o")
	wantErr(t, "entry deleted in the diff layer", err, datastore.ErrNotFound)
	list, err := s.List("")
	must(t, err)
	var got []string
	for _, e := range list {
		got = append(got, e.Key)
	}
	if want := []string{"a", "l", "m"}; !cmp.Equal(got, want) {
		t.Errorf("chain lists %v, want %v", got, want)
	}

	// The base is unchanged.
	ro, _, _ := open(t, base, diffdisk.Options{ReadOnly: true})
	if v, err := ro.RetrieveU32("b", "o"); err != nil || v != 2 {
		t.Errorf("base entry after deletion above = %d, %v", v, err)
	}
	if _, _, err := ro.RetrieveMap("m", "o", nil, 1); err != nil {
		t.Errorf("base snapshot after deletion above: %v", err)
	}
	wantErr(t, "publish on a read-only chain", ro.PublishU32("z", 1, "o", 0), disklayer.ErrReadOnly)
}

func TestDiff(t *testing.T) {
	base := newBase(t)
	{
		s, _, closeAll := open(t, base, diffdisk.Options{})
		must(t, s.PublishU32("same", 1, "o", 0))
		must(t, s.PublishU32("changed", 1, "o", 0))
		must(t, s.PublishString("removed", "x", "o", 0))
		must(t, s.PublishString("secret", "a", "o", datastore.Private))
		must(t, s.PublishMap("m", datastore.MapRange{Source: datastore.SourceDisk, Length: 4}, "o", 0))
		closeAll()
	}
	diff := newDiff(t, base, "diff.hib")
	{
		s, _, closeAll := open(t, diff, diffdisk.Options{})
		must(t, s.PublishU32("same", 1, "o", datastore.Overwrite)) // republished, same value
		must(t, s.PublishU32("changed", 2, "o", datastore.Overwrite))
		must(t, s.Delete("removed", datastore.String, "o"))
		must(t, s.PublishString("secret", "b", "o", datastore.Overwrite|datastore.Private))
		must(t, s.PublishLabel("added", 1, "o", 0))
		_, err := s.SnapshotMap("m", "o")
		must(t, err)
		closeAll()
	}
	a, _, _ := open(t, base, diffdisk.Options{ReadOnly: true})
	b, _, _ := open(t, diff, diffdisk.Options{ReadOnly: true})
	got, err := datastore.Diff(a, b)
	must(t, err)
	want := []datastore.EntryDiff{
		{Key: "added", Type: datastore.Label, Change: "added"},
		{Key: "changed", Type: datastore.U32, Change: "changed"},
		{Key: "m", Type: datastore.Map, Change: "changed"},
		{Key: "removed", Type: datastore.String, Change: "removed"},
		{Key: "secret", Type: datastore.String, Change: "changed"},
	}
	if !cmp.Equal(got, want) {
		t.Errorf("Diff:\n%s", cmp.Diff(want, got))
	}
	if got, err := datastore.Diff(b, b); err != nil || len(got) != 0 {
		t.Errorf("Diff of a chain with itself = %v, %v", got, err)
	}
}
