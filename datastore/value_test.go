package datastore_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hibdisk/hibdisk/datastore"
)

func TestParseEntry(t *testing.T) {
	kib := func(s string) (int64, error) {
		if s == "1K" {
			return 1024, nil
		}
		return 0, errors.New("not 1K")
	}
	for _, c := range []struct {
		typ   datastore.Type
		value string
		opts  datastore.ParseOptions
		want  datastore.Entry
	}{
		{datastore.U32, "0x10", datastore.ParseOptions{}, datastore.Entry{U32: 16}},
		{datastore.Label, "7", datastore.ParseOptions{}, datastore.Entry{Label: 7}},
		{datastore.String, "a b", datastore.ParseOptions{}, datastore.Entry{String: "a b"}},
		{datastore.Mem, "ab", datastore.ParseOptions{}, datastore.Entry{Mem: []byte("ab")}},
		{datastore.Mem, "ab", datastore.ParseOptions{Hex: true}, datastore.Entry{Mem: []byte{0xab}}},
		{datastore.Map, "disk:512:4096", datastore.ParseOptions{}, datastore.Entry{Map: &datastore.MapRange{Source: datastore.SourceDisk, Offset: 512, Length: 4096}}},
		{datastore.Map, "hibernate:1K:1K", datastore.ParseOptions{ParseSize: kib}, datastore.Entry{Map: &datastore.MapRange{Source: datastore.SourceHibernate, Offset: 1024, Length: 1024}}},
	} {
		got, err := datastore.ParseEntry(c.typ, "k", c.value, c.opts)
		c.want.Key, c.want.Type = "k", c.typ
		if err != nil || !cmp.Equal(got, c.want) {
			t.Errorf("ParseEntry(%s, %q) = %+v, %v; want %+v", c.typ, c.value, got, err, c.want)
		}
	}
	for _, c := range []struct {
		typ     datastore.Type
		value   string
		wantErr string
	}{
		{datastore.U32, "4294967296", `u32 value "4294967296": want a number from 0 to 4294967295`},
		{datastore.Label, "x", `label value "x": want a number from 0 to 4294967295`},
		{datastore.Map, "disk:1", `map value "disk:1": want SOURCE:OFFSET:LENGTH`},
		{datastore.Map, "disk:x:1", `map offset: strconv.ParseInt: parsing "x": invalid syntax`},
	} {
		if _, err := datastore.ParseEntry(c.typ, "k", c.value, datastore.ParseOptions{}); err == nil || err.Error() != c.wantErr {
			t.Errorf("ParseEntry(%s, %q): %v, want %s", c.typ, c.value, err, c.wantErr)
		}
	}
	if _, err := datastore.ParseEntry(datastore.Mem, "k", "xyz", datastore.ParseOptions{Hex: true}); err == nil {
		t.Error("ParseEntry of bad hex succeeded")
	}
}

func TestRetrieveValue(t *testing.T) {
	s := mustOpen(t, newBase(t))
	must(t, s.PublishString("s", "hello", "p", 0))
	must(t, s.PublishMem("m", []byte("abcdef"), "p", 0))
	if _, _, err := datastore.RetrieveValue(s, "s", datastore.String, "p", 4, 0); !errors.Is(err, datastore.ErrTooSmall) {
		t.Errorf("string over the bound: %v, want ErrTooSmall", err)
	}
	e, data, err := datastore.RetrieveValue(s, "s", datastore.String, "p", 5, 0)
	if err != nil || e.String != "hello" || data != nil {
		t.Errorf("string at the bound: %+v %q %v", e, data, err)
	}
	e, data, err = datastore.RetrieveValue(s, "m", datastore.Mem, "p", 3, 0)
	if err != nil || string(data) != "abc" || string(e.Mem) != "abcdef" {
		t.Errorf("mem cut to 3: entry %q data %q %v", e.Mem, data, err)
	}
}

// TestFollowOnceAndResume: Follow subscribes, reports the pending
// changes; run again with the same subscription it resumes at the
// cursor, and with Overwrite and Initial it starts over.
func TestFollowOnceAndResume(t *testing.T) {
	s := mustOpen(t, newBase(t))
	must(t, s.PublishU32("a", 1, "p", 0))
	follow := func(flags datastore.Flags) []string {
		var keys []string
		err := datastore.Follow(context.Background(), s, datastore.FollowOptions{Owner: "w", Pattern: ".*", Flags: flags, Once: true}, func(c datastore.Change) error {
			keys = append(keys, c.Key)
			return nil
		})
		must(t, err)
		return keys
	}
	if got := follow(datastore.Initial); !cmp.Equal(got, []string{"a"}) {
		t.Errorf("first follow with Initial: %v, want [a]", got)
	}
	must(t, s.PublishU32("b", 1, "p", 0))
	if got := follow(datastore.Initial); !cmp.Equal(got, []string{"b"}) {
		t.Errorf("resumed follow: %v, want [b] (Initial applies only to a new subscription)", got)
	}
	if got := follow(datastore.Initial | datastore.Overwrite); len(got) != 2 {
		t.Errorf("follow with Overwrite and Initial: %v, want both entries", got)
	}
	stop := errors.New("stop")
	must(t, s.PublishU32("c", 1, "p", 0))
	err := datastore.Follow(context.Background(), s, datastore.FollowOptions{Owner: "w", Pattern: ".*"}, func(datastore.Change) error { return stop })
	if !errors.Is(err, stop) {
		t.Errorf("Follow with a failing report: %v, want its error", err)
	}
}
