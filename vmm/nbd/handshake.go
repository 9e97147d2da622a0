package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// errEndSession ends a connection during the handshake without an error
// worth logging (NBD_OPT_ABORT, or a client that hung up).
var errEndSession = errors.New("session ended by client")

// handshake runs the fixed newstyle negotiation. It returns nil when the
// client entered transmission with c.exp set, and an error when the
// session must end (the caller closes the connection).
func (c *conn) handshake() error {
	bw := bufio.NewWriterSize(c.nc, 4096)
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(hello[16:], handshakeFlagsSent)
	bw.Write(hello[:])
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return fmt.Errorf("read client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^clientFlagsKnown != 0 {
		// The spec requires dropping a client that sets unknown flags.
		return fmt.Errorf("unknown client flags %#x", clientFlags)
	}
	c.noZeroes = clientFlags&flagNoZeroes != 0

	h := optionHandler{c: c, bw: bw}
	for {
		done, err := h.next()
		if err != nil {
			return err
		}
		// h.bw: STARTTLS replaces the writer.
		if err := h.bw.Flush(); err != nil {
			return fmt.Errorf("send option reply: %w", err)
		}
		if done {
			return nil
		}
	}
}

type optionHandler struct {
	c    *conn
	bw   *bufio.Writer
	data []byte // the current option's payload; reused between options
	opt  uint32 // the current option, echoed in replies
}

// next reads and answers one option. done reports that transmission
// begins.
func (h *optionHandler) next() (done bool, err error) {
	c := h.c
	var hdr [optionHeaderLen]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return false, errEndSession
		}
		return false, fmt.Errorf("read option header: %w", err)
	}
	if m := binary.BigEndian.Uint64(hdr[0:]); m != magicIHaveOpt {
		return false, fmt.Errorf("bad option magic %#x", m)
	}
	h.opt = binary.BigEndian.Uint32(hdr[8:])
	length := binary.BigEndian.Uint32(hdr[12:])

	if length > maxOptionLength {
		// No option we understand is this long. Skip it so that the
		// stream stays in sync, unless it is large enough to be an
		// attack or cannot be refused with an error.
		if h.opt == optExportName || length > maxDiscardOptionLength {
			return false, fmt.Errorf("option %d: length %d too large", h.opt, length)
		}
		if _, err := c.br.Discard(int(length)); err != nil {
			return false, fmt.Errorf("skip option %d: %w", h.opt, err)
		}
		if h.known() {
			h.reply(repErrTooBig, fmt.Sprintf("option data of %d bytes is too large", length))
		} else {
			h.reply(repErrUnsup, fmt.Sprintf("option %d is not supported", h.opt))
		}
		return false, nil
	}
	if cap(h.data) < int(length) {
		h.data = make([]byte, length)
	}
	h.data = h.data[:length]
	if _, err := io.ReadFull(c.br, h.data); err != nil {
		return false, fmt.Errorf("read option %d data: %w", h.opt, err)
	}

	// TLS first (tls.go): STARTTLS itself, and the options a server that
	// requires TLS, or refused the client's certificate, must not serve.
	if done, handled, err := h.tlsGate(); handled {
		return done, err
	}
	switch h.opt {
	case optExportName:
		e := c.srv.lookup(string(h.data))
		if e == nil {
			// NBD_OPT_EXPORT_NAME cannot fail with an error: hang up.
			return false, fmt.Errorf("NBD_OPT_EXPORT_NAME: unknown export %q", h.data)
		}
		c.enter(e)
		var b [10 + exportNamePadLen]byte
		binary.BigEndian.PutUint64(b[0:], uint64(e.Backend.Size()))
		binary.BigEndian.PutUint16(b[8:], c.tflags)
		if c.noZeroes {
			h.bw.Write(b[:10])
		} else {
			h.bw.Write(b[:])
		}
		return true, nil
	case optAbort:
		h.reply(repAck, "")
		h.bw.Flush()
		return false, errEndSession
	case optList:
		if length != 0 {
			h.reply(repErrInvalid, "NBD_OPT_LIST takes no data")
			return false, nil
		}
		for _, e := range c.srv.exports {
			var n [4]byte
			binary.BigEndian.PutUint32(n[:], uint32(len(e.Name)))
			h.replyHeader(repServer, 4+len(e.Name)+len(e.Description))
			h.bw.Write(n[:])
			h.bw.WriteString(e.Name)
			h.bw.WriteString(e.Description)
		}
		h.reply(repAck, "")
		return false, nil
	case optInfo, optGo:
		return h.infoOrGo()
	case optStructuredReply:
		if length != 0 {
			h.reply(repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
			return false, nil
		}
		c.structured = true
		h.reply(repAck, "")
		return false, nil
	case optListMetaContext, optSetMetaContext:
		h.metaContext()
		return false, nil
	default:
		h.reply(repErrUnsup, fmt.Sprintf("option %d is not supported", h.opt))
		return false, nil
	}
}

// known reports whether the current option is one this server implements.
func (h *optionHandler) known() bool {
	switch h.opt {
	case optExportName, optAbort, optList, optInfo, optGo, optStructuredReply, optListMetaContext, optSetMetaContext:
		return true
	}
	return false
}

// infoOrGo answers NBD_OPT_INFO and NBD_OPT_GO:
// name length (4), name, number of info requests (2), requests (2 each).
func (h *optionHandler) infoOrGo() (done bool, err error) {
	c, d := h.c, h.data
	if len(d) < 6 {
		h.reply(repErrInvalid, "option data too short")
		return false, nil
	}
	nameLen := binary.BigEndian.Uint32(d)
	if uint64(nameLen) > uint64(len(d)-6) {
		h.reply(repErrInvalid, "export name length exceeds option data")
		return false, nil
	}
	name := d[4 : 4+nameLen]
	rest := d[4+nameLen:]
	nreq := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+2*nreq {
		h.reply(repErrInvalid, "information request count does not match option length")
		return false, nil
	}
	e := c.srv.lookup(string(name))
	if e == nil {
		h.reply(repErrUnknown, fmt.Sprintf("export %q not found", name))
		return false, nil
	}
	var wantName, wantDesc bool
	for i := range nreq {
		switch binary.BigEndian.Uint16(rest[2+2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	tflags := c.transmissionFlags(e)

	var b [14]byte
	binary.BigEndian.PutUint16(b[0:], infoExport)
	binary.BigEndian.PutUint64(b[2:], uint64(e.Backend.Size()))
	binary.BigEndian.PutUint16(b[10:], tflags)
	h.replyHeader(repInfo, 12)
	h.bw.Write(b[:12])

	// Always sent: QEMU asks for it, and it tells every client that
	// unaligned requests are fine (minimum 1).
	binary.BigEndian.PutUint16(b[0:], infoBlockSize)
	binary.BigEndian.PutUint32(b[2:], minBlockSize)
	binary.BigEndian.PutUint32(b[6:], e.PreferredBlockSize)
	binary.BigEndian.PutUint32(b[10:], MaxRequestLength)
	h.replyHeader(repInfo, 14)
	h.bw.Write(b[:14])

	if wantName {
		binary.BigEndian.PutUint16(b[0:], infoName)
		h.replyHeader(repInfo, 2+len(e.Name))
		h.bw.Write(b[:2])
		h.bw.WriteString(e.Name)
	}
	if wantDesc && e.Description != "" {
		binary.BigEndian.PutUint16(b[0:], infoDescription)
		h.replyHeader(repInfo, 2+len(e.Description))
		h.bw.Write(b[:2])
		h.bw.WriteString(e.Description)
	}
	h.reply(repAck, "")
	if h.opt == optGo {
		c.enter(e)
		return true, nil
	}
	return false, nil
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT: export name length (4), name, number of
// queries (4), queries (length (4) and string each). Only base:allocation
// exists; "base:" lists it; unknown queries select nothing.
func (h *optionHandler) metaContext() {
	c, d := h.c, h.data
	set := h.opt == optSetMetaContext
	if set {
		// Setting replaces the previous selection even if it fails.
		c.metaExport = nil
		if !c.structured {
			h.reply(repErrInvalid, "NBD_OPT_SET_META_CONTEXT requires structured replies")
			return
		}
	}
	name, d, ok := cutString(d)
	if !ok || len(d) < 4 {
		h.reply(repErrInvalid, "malformed metadata context option")
		return
	}
	nq := binary.BigEndian.Uint32(d)
	d = d[4:]
	var matched bool
	for range nq {
		var q []byte
		if q, d, ok = cutString(d); !ok {
			h.reply(repErrInvalid, "malformed metadata context query")
			return
		}
		switch string(q) {
		case baseAllocation:
			matched = true
		case baseNamespaceQuery:
			// A wildcard when listing; ignored when setting.
			matched = matched || !set
		}
	}
	if len(d) != 0 {
		h.reply(repErrInvalid, "trailing data after metadata context queries")
		return
	}
	e := c.srv.lookup(string(name))
	if e == nil {
		h.reply(repErrUnknown, fmt.Sprintf("export %q not found", name))
		return
	}
	if nq == 0 && !set {
		matched = true // an empty list query lists every context
	}
	if matched {
		var id [4]byte
		if set {
			binary.BigEndian.PutUint32(id[:], blockStatusCtxID)
			c.metaExport = e
		}
		h.replyHeader(repMetaContext, 4+len(baseAllocation))
		h.bw.Write(id[:])
		h.bw.WriteString(baseAllocation)
	}
	h.reply(repAck, "")
}

// cutString splits a 32-bit length-prefixed string off d.
func cutString(d []byte) (s, rest []byte, ok bool) {
	if len(d) < 4 {
		return nil, d, false
	}
	n := binary.BigEndian.Uint32(d)
	if uint64(n) > uint64(len(d)-4) {
		return nil, d, false
	}
	return d[4 : 4+n], d[4+n:], true
}

func (h *optionHandler) replyHeader(typ uint32, length int) {
	var b [optionReplyHdrLen]byte
	binary.BigEndian.PutUint64(b[0:], magicOptReply)
	binary.BigEndian.PutUint32(b[8:], h.opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(length))
	h.bw.Write(b[:])
}

// reply sends a reply whose data is msg (an error message, or nothing).
func (h *optionHandler) reply(typ uint32, msg string) {
	if typ&repErrBit != 0 {
		h.c.srv.logf(slog.LevelDebug, "nbd: option refused", "remote", h.c.remote, "option", h.opt, "reply", typ&^repErrBit, "msg", msg)
	}
	h.replyHeader(typ, len(msg))
	h.bw.WriteString(msg)
}

// transmissionFlags are the flags advertised for e on this connection.
func (c *conn) transmissionFlags(e *Export) uint16 {
	f := uint16(tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendCache)
	if e.ReadOnly {
		f |= tflagReadOnly
	} else {
		f |= tflagSendTrim | tflagSendWriteZeroes | tflagSendFastZero
	}
	if c.structured {
		// The spec forbids SEND_DF without structured replies.
		f |= tflagSendDF
	}
	if e.MultiConn {
		f |= tflagCanMultiConn
	}
	return f
}

// enter fixes the export for the transmission phase.
func (c *conn) enter(e *Export) {
	c.exp = e
	c.tflags = c.transmissionFlags(e)
	// Block status needs base:allocation selected for this very export.
	c.blockStatus = c.structured && c.metaExport == e
}
