package nbd

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// All integers on the wire are big-endian.

// Magic numbers.
const (
	magicNBD           = 0x4e42444d41474943 // "NBDMAGIC", first word the server sends
	magicIHaveOpt      = 0x49484156454f5054 // "IHAVEOPT", newstyle handshake and option requests
	magicOptReply      = 0x0003e889045565a9 // option replies
	magicRequest       = 0x25609513         // transmission requests
	magicSimpleReply   = 0x67446698         // simple replies
	magicStructReply   = 0x668e33ef         // structured reply chunks
	requestHeaderLen   = 28                 // magic 4, flags 2, type 2, handle 8, offset 8, length 4
	simpleReplyLen     = 16                 // magic 4, error 4, handle 8
	chunkHeaderLen     = 20                 // magic 4, flags 2, type 2, handle 8, length 4
	exportNamePadLen   = 124                // zeroes after NBD_OPT_EXPORT_NAME's reply without NO_ZEROES
	optionHeaderLen    = 16                 // magic 8, option 4, length 4
	optionReplyHdrLen  = 20                 // magic 8, option 4, type 4, length 4
	maxStringLen       = 4096               // the spec's limit for names and messages
	blockStatusCtxID   = 1                  // the metadata context ID of base:allocation
	baseAllocation     = "base:allocation"  // the only metadata context served
	baseNamespaceQuery = "base:"            // LIST_META_CONTEXT wildcard for the base namespace
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	clientFlagsKnown   = flagFixedNewstyle | flagNoZeroes
	handshakeFlagsSent = flagFixedNewstyle | flagNoZeroes
)

// Transmission flags.
const (
	tflagHasFlags        = 1 << 0
	tflagReadOnly        = 1 << 1
	tflagSendFlush       = 1 << 2
	tflagSendFUA         = 1 << 3
	tflagSendTrim        = 1 << 5
	tflagSendWriteZeroes = 1 << 6
	tflagSendDF          = 1 << 7
	tflagCanMultiConn    = 1 << 8
	tflagSendCache       = 1 << 10
	tflagSendFastZero    = 1 << 11
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option reply types.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4
	repErrBit      = 1 << 31
	repErrUnsup    = repErrBit + 1
	repErrPolicy   = repErrBit + 2
	repErrInvalid  = repErrBit + 3
	repErrTLSReqd  = repErrBit + 5
	repErrUnknown  = repErrBit + 6
	repErrShutdown = repErrBit + 7
	repErrTooBig   = repErrBit + 9
)

// NBD_INFO types in NBD_REP_INFO replies.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const (
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4
)

// Structured reply chunk flags and types.
const (
	replyFlagDone        = 1 << 0
	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeOffsetHole  = 2
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 + 1
	replyTypeErrorOffset = 1<<15 + 2
)

// Block size constraints advertised in NBD_INFO_BLOCK_SIZE. The minimum is
// 1 because every request, aligned or not, is served exactly (the backend
// does read-modify-write); MaxRequestLength bounds READ and WRITE payloads,
// which is also what QEMU and libnbd assume without negotiation.
const (
	minBlockSize           = 1
	defaultPreferredBlock  = 4096
	MaxRequestLength       = 32 << 20
	maxOptionLength        = 64 << 10 // larger options are discarded and refused
	maxDiscardOptionLength = 16 << 20 // larger options than this end the session
)

// StateHole and StateZero are the base:allocation flags a Backend reports
// for a run: an unallocated run that reads as zeros is StateHole|StateZero,
// allocated data is 0.
const (
	StateHole uint32 = 1 << 0
	StateZero uint32 = 1 << 1
)
