package nbd

import (
	"encoding/binary"
	"strings"
	"testing"
)

func twoExports() []Export {
	return []Export{
		{Name: "disk", Description: "the disk", Backend: newMemBackend(1 << 20), PreferredBlockSize: 4096, MultiConn: true},
		{Name: "ro", Backend: newMemBackend(64 << 10), ReadOnly: true, PreferredBlockSize: 512},
	}
}

func TestHandshakeGoInfoReplies(t *testing.T) {
	_, sock := startServer(t, twoExports()...)
	c := dial(t, sock)
	c.u32(flagFixedNewstyle | flagNoZeroes)

	// INFO first (stays in negotiation), then GO; both ask for name and
	// description.
	for _, opt := range []uint32{optInfo, optGo} {
		c.option(opt, infoData("disk", infoName, infoDescription, infoBlockSize))
		got := map[uint16][]byte{}
		for {
			r := c.optReply()
			if r.opt != opt {
				t.Fatalf("reply for option %d, want %d", r.opt, opt)
			}
			if r.typ == repAck {
				if len(r.data) != 0 {
					t.Fatalf("ACK with %d bytes of data", len(r.data))
				}
				break
			}
			if r.typ != repInfo {
				t.Fatalf("reply type %#x", r.typ)
			}
			got[binary.BigEndian.Uint16(r.data)] = r.data
		}
		exp := got[infoExport]
		if len(exp) != 12 {
			t.Fatalf("NBD_INFO_EXPORT is %d bytes, want 12", len(exp))
		}
		if size := binary.BigEndian.Uint64(exp[2:]); size != 1<<20 {
			t.Errorf("size %d", size)
		}
		wantFlags := uint16(tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes |
			tflagSendFastZero | tflagSendCache | tflagCanMultiConn)
		if f := binary.BigEndian.Uint16(exp[10:]); f != wantFlags {
			t.Errorf("transmission flags %#x, want %#x", f, wantFlags)
		}
		bs := got[infoBlockSize]
		if len(bs) != 14 {
			t.Fatalf("NBD_INFO_BLOCK_SIZE is %d bytes, want 14", len(bs))
		}
		if mn, pref, mx := binary.BigEndian.Uint32(bs[2:]), binary.BigEndian.Uint32(bs[6:]), binary.BigEndian.Uint32(bs[10:]); mn != 1 || pref != 4096 || mx != 32<<20 {
			t.Errorf("block sizes %d/%d/%d, want 1/4096/32M", mn, pref, mx)
		}
		if n := got[infoName]; string(n[2:]) != "disk" {
			t.Errorf("NBD_INFO_NAME %q", n)
		}
		if d := got[infoDescription]; string(d[2:]) != "the disk" {
			t.Errorf("NBD_INFO_DESCRIPTION %q", d)
		}
	}
	// In transmission now: a read works.
	c.request(cmdRead, 0, 7, 0, 512, nil)
	if r := c.reply(512); !r.simple || r.errno != 0 || r.handle != 7 {
		t.Fatalf("read after GO: %+v", r)
	}
}

func TestHandshakeBlockSizeSentUnasked(t *testing.T) {
	_, sock := startServer(t, twoExports()...)
	c := dial(t, sock)
	c.u32(flagFixedNewstyle)
	c.option(optGo, infoData("ro"))
	var sawBlockSize bool
	for r := c.optReply(); r.typ != repAck; r = c.optReply() {
		switch binary.BigEndian.Uint16(r.data) {
		case infoBlockSize:
			sawBlockSize = true
			if pref := binary.BigEndian.Uint32(r.data[6:]); pref != 512 {
				t.Errorf("preferred block size %d, want 512", pref)
			}
		case infoExport:
			f := binary.BigEndian.Uint16(r.data[10:])
			if f&tflagReadOnly == 0 || f&(tflagSendTrim|tflagSendWriteZeroes|tflagCanMultiConn|tflagSendDF) != 0 {
				t.Errorf("read-only export flags %#x", f)
			}
		}
	}
	if !sawBlockSize {
		t.Error("no NBD_INFO_BLOCK_SIZE")
	}
}

func TestHandshakeUnknownExportAndKeepParsing(t *testing.T) {
	_, sock := startServer(t, twoExports()...)
	c := dial(t, sock)
	c.u32(flagFixedNewstyle | flagNoZeroes)
	for _, opt := range []uint32{optInfo, optGo} {
		c.option(opt, infoData("nope"))
		r := c.optReply()
		if r.typ != repErrUnknown || !strings.Contains(string(r.data), "nope") {
			t.Fatalf("option %d on an unknown export: reply %#x %q", opt, r.typ, r.data)
		}
	}
	// Unknown options, STARTTLS and malformed known options are refused
	// and parsing continues.
	c.option(99, []byte("whatever"))
	if r := c.optReply(); r.typ != repErrUnsup || r.opt != 99 || len(r.data) == 0 {
		t.Fatalf("unknown option: %#x %q", r.typ, r.data)
	}
	c.option(optStartTLS, nil)
	if r := c.optReply(); r.typ != repErrUnsup {
		t.Fatalf("STARTTLS: %#x", r.typ)
	}
	c.option(optGo, []byte{0, 0, 0, 9, 'x'})
	if r := c.optReply(); r.typ != repErrInvalid {
		t.Fatalf("malformed GO: %#x", r.typ)
	}
	c.option(optList, []byte{1})
	if r := c.optReply(); r.typ != repErrInvalid {
		t.Fatalf("LIST with data: %#x", r.typ)
	}
	c.option(optStructuredReply, []byte{1})
	if r := c.optReply(); r.typ != repErrInvalid {
		t.Fatalf("STRUCTURED_REPLY with data: %#x", r.typ)
	}
	// The default export (empty name) is the first one.
	c.option(optGo, infoData(""))
	for r := c.optReply(); r.typ != repAck; r = c.optReply() {
		if r.typ != repInfo {
			t.Fatalf("GO default export: %#x %q", r.typ, r.data)
		}
	}
}

func TestHandshakeList(t *testing.T) {
	_, sock := startServer(t, twoExports()...)
	c := dial(t, sock)
	c.u32(flagFixedNewstyle)
	c.option(optList, nil)
	var names []string
	for r := c.optReply(); r.typ != repAck; r = c.optReply() {
		if r.typ != repServer {
			t.Fatalf("LIST reply %#x", r.typ)
		}
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n])+"|"+string(r.data[4+n:]))
	}
	if strings.Join(names, ",") != "disk|the disk,ro|" {
		t.Fatalf("LIST: %q", names)
	}
}

func TestHandshakeExportName(t *testing.T) {
	_, sock := startServer(t, twoExports()...)
	for _, noZeroes := range []bool{false, true} {
		c := dial(t, sock)
		want := 10 + 124
		if noZeroes {
			c.u32(flagFixedNewstyle | flagNoZeroes)
			want = 10
		} else {
			c.u32(flagFixedNewstyle)
		}
		c.option(optExportName, []byte("disk"))
		b := make([]byte, want)
		c.readFull(b)
		if size := binary.BigEndian.Uint64(b); size != 1<<20 {
			t.Fatalf("size %d", size)
		}
		if f := binary.BigEndian.Uint16(b[8:]); f&tflagHasFlags == 0 || f&tflagSendDF != 0 {
			t.Fatalf("flags %#x", f)
		}
		for _, z := range b[10:] {
			if z != 0 {
				t.Fatal("nonzero padding")
			}
		}
		// The next bytes are a reply to our request, not more padding.
		c.request(cmdRead, 0, 1, 0, 8, nil)
		if r := c.reply(8); !r.simple || r.handle != 1 || r.errno != 0 {
			t.Fatalf("read: %+v", r)
		}
	}
	// An unknown export cannot be refused with an error: the server hangs up.
	c := dial(t, sock)
	c.u32(flagFixedNewstyle)
	c.option(optExportName, []byte("nope"))
	c.expectEOF()
}

func TestHandshakeAbort(t *testing.T) {
	_, sock := startServer(t, twoExports()...)
	c := dial(t, sock)
	c.u32(flagFixedNewstyle)
	c.option(optAbort, nil)
	if r := c.optReply(); r.typ != repAck || r.opt != optAbort {
		t.Fatalf("ABORT: %#x", r.typ)
	}
	c.expectEOF()
}

func TestHandshakeBadClientFlags(t *testing.T) {
	_, sock := startServer(t, twoExports()...)
	c := dial(t, sock)
	c.u32(1 << 5)
	c.expectEOF()
}

func TestHandshakeOversizedOptions(t *testing.T) {
	_, sock := startServer(t, twoExports()...)
	c := dial(t, sock)
	c.u32(flagFixedNewstyle)
	// A 1 MiB unknown option and a 100 KiB GO: skipped and refused, and
	// the next option is parsed correctly.
	c.option(1234, make([]byte, 1<<20))
	if r := c.optReply(); r.typ != repErrUnsup {
		t.Fatalf("big unknown option: %#x", r.typ)
	}
	c.option(optGo, make([]byte, 100<<10))
	if r := c.optReply(); r.typ != repErrTooBig || r.opt != optGo {
		t.Fatalf("big GO: %#x", r.typ)
	}
	c.option(optList, nil)
	for r := c.optReply(); r.typ != repAck; r = c.optReply() {
		if r.typ != repServer {
			t.Fatalf("LIST after big options: %#x", r.typ)
		}
	}
	// An absurd length ends the session without the server reading it.
	var h [optionHeaderLen]byte
	binary.BigEndian.PutUint64(h[0:], magicIHaveOpt)
	binary.BigEndian.PutUint32(h[8:], optGo)
	binary.BigEndian.PutUint32(h[12:], 0xffffffff)
	c.write(h[:])
	c.expectEOF()
}

func TestHandshakeMetaContext(t *testing.T) {
	_, sock := startServer(t, twoExports()...)
	c := dial(t, sock)
	c.u32(flagFixedNewstyle | flagNoZeroes)

	// SET before STRUCTURED_REPLY is invalid.
	c.option(optSetMetaContext, metaData("disk", baseAllocation))
	if r := c.optReply(); r.typ != repErrInvalid {
		t.Fatalf("SET without structured replies: %#x", r.typ)
	}
	c.option(optStructuredReply, nil)
	if r := c.optReply(); r.typ != repAck {
		t.Fatalf("STRUCTURED_REPLY: %#x", r.typ)
	}
	collect := func(opt uint32, data []byte) (names []string, ids []uint32, final uint32) {
		c.option(opt, data)
		for {
			r := c.optReply()
			if r.typ != repMetaContext {
				return names, ids, r.typ
			}
			ids = append(ids, binary.BigEndian.Uint32(r.data))
			names = append(names, string(r.data[4:]))
		}
	}
	cases := []struct {
		opt     uint32
		queries []string
		want    string
	}{
		{optListMetaContext, nil, baseAllocation},
		{optListMetaContext, []string{"base:"}, baseAllocation},
		{optListMetaContext, []string{"qemu:dirty-bitmap:x", "base:allocation", "base:"}, baseAllocation},
		{optListMetaContext, []string{"x-foo:bar", "base:nothing"}, ""},
		{optSetMetaContext, []string{"base:"}, ""},
		{optSetMetaContext, []string{"qemu:allocation-depth"}, ""},
		{optSetMetaContext, nil, ""},
		{optSetMetaContext, []string{"base:allocation", "base:allocation"}, baseAllocation},
	}
	for _, tc := range cases {
		names, ids, final := collect(tc.opt, metaData("disk", tc.queries...))
		if final != repAck || strings.Join(names, ",") != tc.want {
			t.Errorf("option %d %q: contexts %q final %#x, want %q", tc.opt, tc.queries, names, final, tc.want)
		}
		if tc.opt == optSetMetaContext && len(ids) == 1 && ids[0] == 0 {
			t.Errorf("SET: context ID 0")
		}
	}
	if _, _, final := collect(optSetMetaContext, metaData("nope", baseAllocation)); final != repErrUnknown {
		t.Errorf("SET on unknown export: %#x", final)
	}
	if _, _, final := collect(optListMetaContext, []byte{0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 0, 0, 1, 0, 0, 0, 99}); final != repErrInvalid {
		t.Errorf("truncated query: %#x", final)
	}
	// Selected for "disk", then GO to "disk": block status works, flags
	// include SEND_DF.
	if names, _, _ := collect(optSetMetaContext, metaData("disk", baseAllocation)); len(names) != 1 {
		t.Fatalf("SET: %q", names)
	}
	c.option(optGo, infoData("disk"))
	for r := c.optReply(); r.typ != repAck; r = c.optReply() {
		if binary.BigEndian.Uint16(r.data) == infoExport && binary.BigEndian.Uint16(r.data[10:])&tflagSendDF == 0 {
			t.Error("no SEND_DF with structured replies")
		}
	}
	c.request(cmdBlockStatus, 0, 1, 0, 4096, nil)
	if r := c.reply(0); r.typ != replyTypeBlockStatus || r.errno != 0 {
		t.Fatalf("block status: %+v", r)
	}
}

func TestBlockStatusNeedsContextForSameExport(t *testing.T) {
	_, sock := startServer(t, twoExports()...)
	c := dial(t, sock)
	c.u32(flagFixedNewstyle | flagNoZeroes)
	c.option(optStructuredReply, nil)
	c.optReply()
	c.option(optSetMetaContext, metaData("ro", baseAllocation))
	c.optReply()
	c.optReply()
	c.option(optGo, infoData("disk"))
	for r := c.optReply(); r.typ != repAck; r = c.optReply() {
	}
	c.request(cmdBlockStatus, 0, 1, 0, 4096, nil)
	if r := c.reply(0); r.errno != EINVAL {
		t.Fatalf("block status with a context for another export: %+v", r)
	}
}
