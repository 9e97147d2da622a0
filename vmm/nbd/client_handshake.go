package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// ExportInfo is what a server said about an export during the handshake.
type ExportInfo struct {
	Size        int64
	Flags       uint16 // transmission flags
	Description string // NBD_INFO_DESCRIPTION; "" when the server sent none
	// Block size constraints (NBD_INFO_BLOCK_SIZE); 1, 4096 and 32 MiB
	// when the server sent none, as the spec says a client may assume.
	MinBlock, PreferredBlock, MaxBlock uint32
}

// ReadOnly reports whether the server refuses writes to the export.
func (x ExportInfo) ReadOnly() bool { return x.Flags&tflagReadOnly != 0 }

// CanMultiConn reports whether the server allows several connections to
// one export to share a consistent view.
func (x ExportInfo) CanMultiConn() bool { return x.Flags&tflagCanMultiConn != 0 }

// negotiated is the outcome of a client handshake.
type negotiated struct {
	info       ExportInfo
	structured bool   // structured replies are on
	allocCtx   uint32 // base:allocation's context id, when allocOK
	allocOK    bool
}

// clientHandshake runs the fixed newstyle negotiation for export on nc:
// structured replies, the base:allocation meta context, then NBD_OPT_GO
// asking for the block sizes and the description. Servers that know
// neither GO nor structured replies (oldstyle ones are refused) still
// work through NBD_OPT_EXPORT_NAME. With tlsCfg, TLS comes first
// (NBD_OPT_STARTTLS); the connection and reader to use afterwards are
// returned.
func clientHandshake(nc net.Conn, br *bufio.Reader, export string, tlsCfg *tls.Config) (negotiated, net.Conn, *bufio.Reader, error) {
	n, err := clientNegotiate(&nc, &br, export, tlsCfg)
	return n, nc, br, err
}

func clientNegotiate(ncp *net.Conn, brp **bufio.Reader, export string, tlsCfg *tls.Config) (negotiated, error) {
	nc, br := *ncp, *brp
	var n negotiated
	var hello [18]byte
	if _, err := io.ReadFull(br, hello[:]); err != nil {
		return n, fmt.Errorf("read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != magicNBD {
		return n, errors.New("not an NBD server (no NBDMAGIC greeting)")
	}
	if binary.BigEndian.Uint64(hello[8:]) != magicIHaveOpt {
		return n, errors.New("the server speaks the oldstyle NBD handshake, which is not supported")
	}
	serverFlags := binary.BigEndian.Uint16(hello[16:])
	if serverFlags&flagFixedNewstyle == 0 {
		return n, errors.New("the server does not speak the fixed newstyle NBD handshake")
	}
	noZeroes := serverFlags&flagNoZeroes != 0
	var cf [4]byte
	binary.BigEndian.PutUint32(cf[:], uint32(serverFlags&clientFlagsKnown))
	if _, err := nc.Write(cf[:]); err != nil {
		return n, fmt.Errorf("send client flags: %w", err)
	}
	o := optionClient{nc: nc, br: br}
	var err error
	if tlsCfg != nil {
		if err := o.send(optStartTLS, nil); err != nil {
			return n, err
		}
		typ, msg, err := o.reply(optStartTLS)
		if err != nil {
			return n, err
		}
		if typ != repAck {
			return n, fmt.Errorf("the server does not offer TLS (NBD_OPT_STARTTLS: %s): connect with nbd:// if it serves without TLS", replyWhat(typ, msg))
		}
		tc := tls.Client(nc, tlsCfg)
		if err := tc.Handshake(); err != nil {
			return n, fmt.Errorf("TLS handshake: %w", err)
		}
		nc, br = tc, bufio.NewReaderSize(tc, 256<<10)
		*ncp, *brp = nc, br
		o = optionClient{nc: nc, br: br}
	}
	if n.structured, err = o.simple(optStructuredReply, nil); err != nil {
		return n, err
	}
	if n.structured {
		if n.allocCtx, n.allocOK, err = o.setMetaContext(export); err != nil {
			return n, err
		}
	}
	n.info, err = o.goExport(export, noZeroes)
	return n, err
}

// optionClient sends options and reads their replies.
type optionClient struct {
	nc net.Conn
	br *bufio.Reader
}

func (o optionClient) send(opt uint32, data []byte) error {
	b := make([]byte, optionHeaderLen+len(data))
	binary.BigEndian.PutUint64(b[0:], magicIHaveOpt)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	copy(b[optionHeaderLen:], data)
	if _, err := o.nc.Write(b); err != nil {
		return fmt.Errorf("send option %d: %w", opt, err)
	}
	return nil
}

// reply reads one option reply to opt.
func (o optionClient) reply(opt uint32) (typ uint32, data []byte, err error) {
	var h [optionReplyHdrLen]byte
	if _, err := io.ReadFull(o.br, h[:]); err != nil {
		return 0, nil, fmt.Errorf("read reply to option %d: %w", opt, err)
	}
	if binary.BigEndian.Uint64(h[0:]) != magicOptReply || binary.BigEndian.Uint32(h[8:]) != opt {
		return 0, nil, fmt.Errorf("bad reply to option %d (% x)", opt, h[:])
	}
	typ, length := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
	if length > maxOptionLength {
		return 0, nil, fmt.Errorf("reply to option %d of %d bytes is too long", opt, length)
	}
	data = make([]byte, length)
	if _, err := io.ReadFull(o.br, data); err != nil {
		return 0, nil, fmt.Errorf("read reply to option %d: %w", opt, err)
	}
	return typ, data, nil
}

// simple sends an option that is answered by ACK or an error; it reports
// whether the server acknowledged it.
func (o optionClient) simple(opt uint32, data []byte) (bool, error) {
	if err := o.send(opt, data); err != nil {
		return false, err
	}
	typ, _, err := o.reply(opt)
	return err == nil && typ == repAck, err
}

// setMetaContext asks for base:allocation on export.
func (o optionClient) setMetaContext(export string) (uint32, bool, error) {
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint32(data, 1)
	data = binary.BigEndian.AppendUint32(data, uint32(len(baseAllocation)))
	data = append(data, baseAllocation...)
	if err := o.send(optSetMetaContext, data); err != nil {
		return 0, false, err
	}
	var id uint32
	var ok bool
	for {
		typ, reply, err := o.reply(optSetMetaContext)
		if err != nil {
			return 0, false, err
		}
		switch {
		case typ == repMetaContext && len(reply) >= 4 && string(reply[4:]) == baseAllocation:
			id, ok = binary.BigEndian.Uint32(reply), true
		case typ == repAck, typ&repErrBit != 0:
			return id, ok, nil
		}
	}
}

// goExport enters transmission with NBD_OPT_GO, or NBD_OPT_EXPORT_NAME
// when the server does not know GO.
func (o optionClient) goExport(export string, noZeroes bool) (ExportInfo, error) {
	x := ExportInfo{MinBlock: 1, PreferredBlock: defaultPreferredBlock, MaxBlock: MaxRequestLength}
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 2)
	data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	data = binary.BigEndian.AppendUint16(data, infoDescription)
	if err := o.send(optGo, data); err != nil {
		return x, err
	}
	sawExport := false
	for {
		typ, reply, err := o.reply(optGo)
		if err != nil {
			return x, err
		}
		switch {
		case typ == repInfo:
			sawExport = x.parseInfo(reply) || sawExport
		case typ == repAck:
			if !sawExport {
				return x, errors.New("the server entered transmission without saying the export's size")
			}
			return x, nil
		case typ == repErrUnsup:
			return o.exportName(export, noZeroes, x)
		case typ&repErrBit != 0:
			return x, optionError(export, typ, reply)
		}
	}
}

// parseInfo takes one NBD_REP_INFO; it reports whether it was
// NBD_INFO_EXPORT.
func (x *ExportInfo) parseInfo(b []byte) bool {
	if len(b) < 2 {
		return false
	}
	switch binary.BigEndian.Uint16(b) {
	case infoExport:
		if len(b) >= 12 {
			x.Size, x.Flags = int64(binary.BigEndian.Uint64(b[2:])), binary.BigEndian.Uint16(b[10:])
			return true
		}
	case infoDescription:
		x.Description = string(b[2:])
	case infoBlockSize:
		if len(b) >= 14 {
			x.MinBlock, x.PreferredBlock, x.MaxBlock = binary.BigEndian.Uint32(b[2:]), binary.BigEndian.Uint32(b[6:]), binary.BigEndian.Uint32(b[10:])
		}
	}
	return false
}

// exportName is the old way into transmission.
func (o optionClient) exportName(export string, noZeroes bool, x ExportInfo) (ExportInfo, error) {
	if err := o.send(optExportName, []byte(export)); err != nil {
		return x, err
	}
	n := 10
	if !noZeroes {
		n += exportNamePadLen
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(o.br, b); err != nil {
		return x, fmt.Errorf("export %q: the server closed the connection (no such export?): %w", export, err)
	}
	x.Size, x.Flags = int64(binary.BigEndian.Uint64(b)), binary.BigEndian.Uint16(b[8:])
	return x, nil
}

// optionError names an option error reply.
func optionError(export string, typ uint32, msg []byte) error {
	return fmt.Errorf("export %q: %s", export, replyWhat(typ, msg))
}

// replyWhat says what an option error reply means.
func replyWhat(typ uint32, msg []byte) string {
	what := fmt.Sprintf("error %#x", typ)
	switch typ {
	case repErrUnknown:
		what = "no such export"
	case repErrPolicy:
		what = "refused by the server's policy"
	case repErrTLSReqd:
		what = "the server requires TLS (use an nbds:// URI)"
	case repErrUnsup:
		what = "not supported"
	case repErrShutdown:
		what = "the server is shutting down"
	case repErrInvalid:
		what = "invalid request"
	}
	if len(msg) > 0 {
		what += ": " + string(msg)
	}
	return what
}
