package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/vmm/nbd"
	"github.com/hibdisk/hibdisk/vmm/nbddisk"
)

func init() {
	register(command{name: "serve", summary: "serve layer chains over NBD until interrupted", run: runServe})
}

// multiFlag collects a repeated string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// exportSpec is one export asked for on the command line.
type exportSpec struct{ name, file string }

// serveOptions are serve's flags and arguments.
type serveOptions struct {
	specs               []exportSpec
	socket, listen      string
	readOnly, readCache bool
	reconnectDelay      time.Duration // diffdisk.Options.ReconnectDelay
	stats               string        // --stats FILE
	hibExport           string
	create              string
	// qemu-nbd's conventions (see the README's table).
	persistent bool   // -t: keep serving after the last client
	fork       bool   // --fork: daemonize once listening
	pidFile    string // --pid-file, absolute
	asJSON     bool   // --json, --output=json: one JSON line when ready
	// TLS (serve_tls.go).
	tls serveTLS
	// maxConns: --max-connections (0: no limit); the stall bounds.
	maxConns                         int
	handshakeTimeout, payloadTimeout time.Duration
}

func runServe(ctx context.Context, e *env, args []string) error {
	o, err := parseServeArgs(e, args)
	if err != nil {
		return err
	}
	if o.fork && !isForkedServer() {
		if e.stdout != io.Writer(os.Stdout) {
			return errors.New("--fork runs the hibdisk binary again: it needs the process's own stdout")
		}
		return forkServe()
	}
	if err := createServed(o); err != nil {
		return err
	}
	var disks []*diffdisk.Disk // closed in reverse order
	defer func() {
		for i := len(disks) - 1; i >= 0; i-- {
			if err := disks[i].Close(); err != nil {
				fmt.Fprintf(e.stderr, "hibdisk serve: %s\n", oneLine(err.Error()))
			}
		}
	}()
	exports, err := openExports(o, &disks)
	if err != nil {
		return err
	}
	atOpen := remoteBases(disks)
	defer func() { reportRemote(e.stderr, atOpen, remoteBases(disks)) }() // before the disks close
	defer func() {
		if err := reportStats(e.stderr, o.stats, serveStats(o, disks)); err != nil {
			fmt.Fprintf(e.stderr, "hibdisk serve: %s\n", oneLine(err.Error()))
		}
	}()
	stopDatastores, err := serveDatastores(e, o, disks)
	defer stopDatastores() // before the disks close
	if err != nil {
		return err
	}
	srv, err := nbd.NewServer(exports...)
	if err != nil {
		return err
	}
	srv.Logger = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv.MaxConnections = o.maxConns
	srv.HandshakeTimeout, srv.PayloadTimeout = o.handshakeTimeout, o.payloadTimeout
	if err := o.tls.configure(srv); err != nil {
		return err
	}

	l, where, activated, err := listenServe(o)
	if err != nil {
		return err
	}
	if !activated && l.Addr().Network() == "unix" {
		defer os.Remove(where)
	}
	banner := e.stdout
	if activated {
		// Under socket activation stdout may belong to the client.
		banner = e.stderr
	}
	var idle <-chan struct{}
	if !o.persistent {
		il := newIdleListener(l)
		l, idle = il, il.idle
	}
	if o.pidFile != "" {
		if err := writePidFile(o.pidFile); err != nil {
			return err
		}
		defer os.Remove(o.pidFile)
	}
	uri := o.tls.uri(exportURI(l, where, exports[0].Name))
	if err := sdNotify(fmt.Sprintf("READY=1\nSTATUS=serving %d export(s) at %s\nMAINPID=%d", len(exports), uri, os.Getpid())); err != nil {
		fmt.Fprintf(e.stderr, "hibdisk serve: %s\n", oneLine(err.Error()))
	}
	defer sdNotify("STOPPING=1")
	if o.asJSON {
		if err := printServeJSON(banner, l, where, o, exports); err != nil {
			return err
		}
	} else {
		printBanner(banner, l, where, exports, o.persistent, o.tls)
	}
	forkedReady()
	return serveUntilDone(ctx, srv, l, idle)
}

// parseServeArgs parses serve's command line.
func parseServeArgs(e *env, args []string) (serveOptions, error) {
	fs := newFlags(e, "serve", "--nbd [-k|--socket PATH | --listen HOST:PORT | [-b ADDR] -p PORT] [-r|--read-only] [-x|--export NAME] [--export NAME=FILE]... [-t|--persistent[=false]] [--fork] [--pid-file FILE] [--json] [--hibernate-export NAME] [--create SIZE] [--stats FILE] [FILE]")
	nbdMode := fs.Bool("nbd", false, "serve over NBD (the only protocol so far; required)")
	socket := fs.String("socket", "", "unix socket path (default: FILE with extension .sock, mode 0600)")
	fs.StringVar(socket, "k", "", "same as --socket (qemu-nbd's -k)")
	listen := fs.String("listen", "", "TCP HOST:PORT instead of a unix socket; HOST defaults to 127.0.0.1")
	port := fs.String("p", "", "TCP port, as qemu-nbd's -p (with -b; same as --listen ADDR:PORT)")
	fs.StringVar(port, "port", "", "same as -p")
	bind := fs.String("b", "", "TCP address for -p (default 127.0.0.1, where qemu-nbd's is 0.0.0.0)")
	fs.StringVar(bind, "bind", "", "same as -b")
	readOnly := fs.Bool("read-only", false, "refuse writes (EPERM); the layers are opened read-only")
	fs.BoolVar(readOnly, "r", false, "same as --read-only (qemu-nbd's -r)")
	var exportFlags multiFlag
	fs.Var(&exportFlags, "export", `export name of FILE (default ""), or NAME=FILE for another export; repeatable`)
	fs.Var(&exportFlags, "x", "same as --export (qemu-nbd's -x NAME)")
	fs.Var(&exportFlags, "export-name", "same as --export (qemu-nbd's long name)")
	persistent := fs.Bool("persistent", true, "keep serving after the last client disconnects (default; --persistent=false exits then, as qemu-nbd without -t)")
	fs.BoolVar(persistent, "t", true, "same as --persistent (qemu-nbd's -t)")
	fork := fs.Bool("fork", false, "run in the background once listening: exit 0 when the server is ready, or with its error")
	pidFile := fs.String("pid-file", "", "write the server's pid to this file once it is ready; removed when it exits cleanly")
	output := outputFormat(fs)
	hibExport := fs.String("hibernate-export", "", "also export the first chain's hibernate file under this name")
	create := fs.String("create", "", "create FILE with this size when it does not exist")
	readCache := fs.Bool("read-cache", false, "copy what reads find below into the top layer")
	reconnect := fs.Duration("reconnect-delay", diffdisk.DefaultReconnectDelay, "how long reads wait for a lost server of a remote base (-F nbd, or an s3:// base's store) before failing with EIO; 0 fails at once")
	statsFile := fs.String("stats", "", "when serving ends, write to this file (JSON) what each export's clients read and what its lazy remote bases fetched")
	tlsFlags := addTLSFlags(fs)
	maxConns := fs.Int("max-connections", 0, "serve at most N clients at once; more get an NBD error saying so (0: no limit)")
	handshakeTimeout := fs.Duration("handshake-timeout", nbd.DefaultHandshakeTimeout, "drop a client that has not finished the NBD handshake (TLS included) by then")
	payloadTimeout := fs.Duration("payload-timeout", nbd.DefaultPayloadTimeout, "drop a client whose WRITE payload stalls this long")
	pos, err := parseArgs(fs, args, 0, 1)
	if err != nil {
		return serveOptions{}, err
	}
	if !*nbdMode {
		return serveOptions{}, usagef("say which protocol to serve: --nbd")
	}
	if *bind != "" && *port == "" {
		*port = "10809" // qemu-nbd's default port
	}
	if *port != "" {
		if *listen != "" {
			return serveOptions{}, usagef("-p/-b and --listen exclude each other")
		}
		host := *bind
		if host == "" {
			host = "127.0.0.1"
		}
		*listen = net.JoinHostPort(host, *port)
	}
	if *socket != "" && *listen != "" {
		return serveOptions{}, usagef("--socket and --listen (or -p) exclude each other")
	}
	asJSON, err := output()
	if err != nil {
		return serveOptions{}, err
	}
	if *pidFile != "" {
		if *pidFile, err = filepath.Abs(*pidFile); err != nil {
			return serveOptions{}, err
		}
	}
	specs, err := exportSpecs(pos, exportFlags)
	if err != nil {
		return serveOptions{}, err
	}
	tlsOpts, err := tlsFlags.options(*listen)
	if err != nil {
		return serveOptions{}, err
	}
	if *maxConns < 0 {
		return serveOptions{}, usagef("--max-connections %d: want 0 (no limit) or more", *maxConns)
	}
	if *handshakeTimeout <= 0 || *payloadTimeout <= 0 {
		return serveOptions{}, usagef("--handshake-timeout and --payload-timeout must be positive (a stalled client would hold its connection forever)")
	}
	return serveOptions{
		tls: tlsOpts, maxConns: *maxConns, handshakeTimeout: *handshakeTimeout, payloadTimeout: *payloadTimeout,
		specs: specs, socket: *socket, listen: *listen, readOnly: *readOnly, readCache: *readCache,
		hibExport: *hibExport, create: *create, reconnectDelay: noneIfZero(*reconnect), stats: *statsFile,
		persistent: *persistent, fork: *fork, pidFile: *pidFile, asJSON: asJSON,
	}, nil
}

// createServed creates the first export's file for --create when it
// does not exist.
func createServed(o serveOptions) error {
	if o.create == "" {
		return nil
	}
	size, err := parseSize(o.create)
	if err != nil {
		return usageError{msg: err.Error()}
	}
	if _, err := os.Stat(o.specs[0].file); errors.Is(err, os.ErrNotExist) {
		if err := diffdisk.Create(o.specs[0].file, diffdisk.CreateOptions{Size: size}); err != nil {
			return err
		}
	}
	return nil
}

// openExports opens every export's chain, and the first chain's
// hibernate file for --hibernate-export (last), appending each to
// *disks as it opens, so the caller closes them even after an error.
func openExports(o serveOptions, disks *[]*diffdisk.Disk) ([]nbd.Export, error) {
	var exports []nbd.Export
	for _, s := range o.specs {
		d, err := openServed(s.file, o.readOnly, o.readCache, o.reconnectDelay)
		if err != nil {
			return nil, err
		}
		*disks = append(*disks, d)
		// One SQLite connection serves every NBD connection, so a
		// FLUSH on any of them commits all their writes.
		exports = append(exports, nbddisk.Export(s.name, d, nbddisk.ExportOptions{Description: describe(s.file, d, !nbddisk.Writable(d)), MultiConn: true}))
	}
	if o.hibExport != "" {
		h, err := (*disks)[0].Hibernate()
		if err != nil {
			return nil, err
		}
		*disks = append(*disks, h)
		exports = append(exports, nbddisk.Export(o.hibExport, h, nbddisk.ExportOptions{Description: "hibernate file of " + o.specs[0].file, MultiConn: true}))
	}
	return exports, nil
}

// serveDatastores serves the datastore of every export's chain (see
// serveDatastore); stop ends those that started, last first, and is to
// be called even after an error.
func serveDatastores(e *env, o serveOptions, disks []*diffdisk.Disk) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	for i, s := range o.specs {
		var hib *diffdisk.Disk
		if i == 0 && o.hibExport != "" {
			hib = disks[len(disks)-1]
		}
		stopOne, err := serveDatastore(e, s.file, disks[i], hib)
		if err != nil {
			return stop, err
		}
		stops = append(stops, stopOne)
	}
	return stop, nil
}

// listenServe listens where the flags say: an inherited socket, --listen,
// --socket, or a unix socket beside the first file.
func listenServe(o serveOptions) (l net.Listener, where string, activated bool, err error) {
	socket := o.socket
	if socket == "" {
		file := o.specs[0].file
		socket = strings.TrimSuffix(file, filepath.Ext(file)) + ".sock"
	}
	l, where, activated, err = nbd.Listen(nbd.ListenOptions{TCP: o.listen, Unix: socket})
	if errors.Is(err, nbd.ErrAddress) {
		return nil, "", false, usagef("--listen %q: want HOST:PORT", o.listen)
	}
	return l, where, activated, err
}

// serveUntilDone serves until the server fails, ctx ends (SIGINT,
// SIGTERM) or idle is closed (the last client left, without
// --persistent); then it stops accepting, answers what is in flight and
// flushes every export.
func serveUntilDone(ctx context.Context, srv *nbd.Server, l net.Listener, idle <-chan struct{}) error {
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	case <-idle:
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	<-served
	return nil
}

// exportSpecs pairs export names with files: the positional FILE takes a
// plain --export NAME (default ""), and every --export NAME=FILE adds one.
func exportSpecs(pos []string, flags []string) ([]exportSpec, error) {
	var specs []exportSpec
	mainName, mainNamed := "", false
	for _, f := range flags {
		if name, file, ok := strings.Cut(f, "="); ok {
			if file == "" {
				return nil, usagef("--export %q: no file after =", f)
			}
			specs = append(specs, exportSpec{name, file})
			continue
		}
		if mainNamed {
			return nil, usagef("--export NAME given twice for FILE (use NAME=FILE for more exports)")
		}
		mainName, mainNamed = f, true
	}
	if len(pos) == 1 {
		specs = append([]exportSpec{{mainName, pos[0]}}, specs...)
	} else if mainNamed {
		return nil, usagef("--export %q names no FILE", mainName)
	}
	if len(specs) == 0 {
		return nil, usagef("nothing to serve: give FILE or --export NAME=FILE")
	}
	seen := map[string]bool{}
	for _, s := range specs {
		if seen[s.name] {
			return nil, usagef("export name %q used twice", s.name)
		}
		seen[s.name] = true
	}
	return specs, nil
}

// openServed opens what an export serves: a hibdisk chain writable
// unless readOnly, or a raw image (read-write only when asked).
// A read-only export holds its image stable (nobody may write it while it
// is served), and a layer marked read-only (a sealed or hibernated
// snapshot) is exported read-only rather than writable with every write
// failing.
func openServed(path string, readOnly, readCache bool, reconnectDelay time.Duration) (*diffdisk.Disk, error) {
	if !readOnly {
		marked, err := markedReadOnly(path)
		if err != nil {
			return nil, err
		}
		readOnly = marked
	}
	if readOnly {
		return diffdisk.OpenImageWith(path, diffdisk.Options{HoldStable: true, ReconnectDelay: reconnectDelay})
	}
	return diffdisk.Open(path, diffdisk.Options{ReadCache: readCache, WriteBack: true, ReconnectDelay: reconnectDelay})
}

// markedReadOnly reports whether path is a hibdisk layer whose read_only
// flag is set.
func markedReadOnly(path string) (bool, error) {
	// Anything that does not open here is reported by the real open.
	if ok, err := sqlitelayer.IsLayer(path); err != nil || !ok {
		return false, nil
	}
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		return false, nil
	}
	marked := f.Info().ReadOnly
	return marked, f.Close()
}

// describe is an export's NBD description. It names the top layer's
// uuid, and its generation when the export is read-only (a writable one
// moves while it is served), which is how a diff layer made over this
// export elsewhere (create -b nbd://... -F nbd) knows it is still the
// same disk.
func describe(path string, d *diffdisk.Disk, readOnly bool) string {
	desc := fmt.Sprintf("hibdisk %s: %d layer(s), %s", filepath.Base(path), d.Depth(), formatSize(d.Size()))
	uuid, generation := d.TopIdentity()
	switch {
	case uuid == "":
	case readOnly:
		desc += fmt.Sprintf(", layer %s generation %d", uuid, generation)
	default:
		desc += fmt.Sprintf(", writable layer %s", uuid)
	}
	return desc
}

// exportURI is the NBD URI a client connects to for export name.
func exportURI(l net.Listener, where, name string) string {
	if l.Addr().Network() == "unix" {
		return fmt.Sprintf("nbd+unix:///%s?socket=%s", url.PathEscape(name), where)
	}
	host, port, _ := net.SplitHostPort(where)
	return fmt.Sprintf("nbd://%s/%s", net.JoinHostPort(dialHost(host), port), url.PathEscape(name))
}

// printBanner says where the exports are and how QEMU connects.
func printBanner(w io.Writer, l net.Listener, where string, exports []nbd.Export, persistent bool, tls serveTLS) {
	for i, x := range exports {
		var blockdev string
		node := fmt.Sprintf("hd%d", i)
		exportOpt := ""
		if x.Name != "" {
			exportOpt = ",export=" + x.Name
		}
		if l.Addr().Network() == "unix" {
			blockdev = fmt.Sprintf("-blockdev driver=nbd,node-name=%s,server.type=unix,server.path=%s%s", node, where, exportOpt)
		} else {
			host, port, _ := net.SplitHostPort(where)
			blockdev = fmt.Sprintf("-blockdev driver=nbd,node-name=%s,server.type=inet,server.host=%s,server.port=%s%s", node, dialHost(host), port, exportOpt)
		}
		ro := ""
		if x.ReadOnly {
			ro = " (read-only)"
		}
		fmt.Fprintf(w, "export %q: %s%s\n", x.Name, x.Description, ro)
		fmt.Fprintf(w, "  NBD URI: %s\n", tls.uri(exportURI(l, where, x.Name)))
		if tls.on() {
			fmt.Fprintf(w, "  QEMU:    %s %s,tls-creds=tls0 -device virtio-blk-pci,drive=%s\n", tls.qemuObject(), blockdev, node)
		} else {
			fmt.Fprintf(w, "  QEMU:    %s -device virtio-blk-pci,drive=%s\n", blockdev, node)
		}
	}
	tls.describe(w)
	if persistent {
		fmt.Fprintln(w, "Serving; stop with Ctrl-C (in-flight requests finish, then the layers are flushed).")
	} else {
		fmt.Fprintln(w, "Serving; exits when the last client disconnects, or stop with Ctrl-C (in-flight requests finish, then the layers are flushed).")
	}
}

// serveJSON is what serve --json prints, on one line, once it is ready
// (the README documents it).
type serveJSON struct {
	URI     string            `json:"uri"`               // of the first export
	Socket  string            `json:"socket,omitempty"`  // unix socket
	Address string            `json:"address,omitempty"` // TCP HOST:PORT a client dials
	Exports []serveJSONExport `json:"exports"`
	PID     int               `json:"pid"`
	TLS     bool              `json:"tls"` // clients may (--tls on) or must (require) use TLS
}

type serveJSONExport struct {
	Name     string `json:"name"`
	URI      string `json:"uri"`
	File     string `json:"file"` // absolute; for --hibernate-export, the layer
	ReadOnly bool   `json:"read_only"`
	Size     int64  `json:"size"`
}

// printServeJSON prints serve's readiness as one JSON line.
func printServeJSON(w io.Writer, l net.Listener, where string, o serveOptions, exports []nbd.Export) error {
	out := serveJSON{URI: o.tls.uri(exportURI(l, where, exports[0].Name)), PID: os.Getpid(), TLS: o.tls.on()}
	if l.Addr().Network() == "unix" {
		out.Socket = where
	} else {
		host, port, _ := net.SplitHostPort(where)
		out.Address = net.JoinHostPort(dialHost(host), port)
	}
	for i, x := range exports {
		file := o.specs[0].file // --hibernate-export: the first chain's
		if i < len(o.specs) {
			file = o.specs[i].file
		}
		if abs, err := filepath.Abs(file); err == nil {
			file = abs
		}
		out.Exports = append(out.Exports, serveJSONExport{
			Name: x.Name, URI: o.tls.uri(exportURI(l, where, x.Name)), File: file, ReadOnly: x.ReadOnly, Size: x.Backend.Size(),
		})
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// dialHost is the host a client connects to for a server listening on
// host: for every address (0.0.0.0, ::, which Go reports as [::]) this
// machine's name when it resolves, else loopback; otherwise host itself.
func dialHost(host string) string {
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return host
	}
	if name, err := os.Hostname(); err == nil && name != "" {
		if _, err := net.LookupHost(name); err == nil {
			return name
		}
	}
	return "127.0.0.1"
}

// remoteBases lists the remote bases (NBD exports) of the served chains.
func remoteBases(disks []*diffdisk.Disk) []diffdisk.RemoteBase {
	var out []diffdisk.RemoteBase
	for _, d := range disks {
		out = append(out, d.RemoteBases()...)
	}
	return out
}

// reportRemote says, when serving ends, what each remote base cost: the
// data bytes fetched from its server, of them those read at open to
// verify its identity, and the reconnects. With --read-cache, a second
// serve of the same layer fetches only the identity check.
func reportRemote(w io.Writer, atOpen, atEnd []diffdisk.RemoteBase) {
	for i, r := range atEnd {
		fmt.Fprintf(w, "hibdisk serve: remote base %s: fetched %d bytes (%d at open, verifying its identity), %d reconnect(s)\n",
			r.URI, r.Fetched, atOpen[i].Fetched, r.Reconnects)
	}
}

// noneIfZero maps the flag's 0 ("fail at once") to diffdisk's negative
// ReconnectDelay (0 there means the default).
func noneIfZero(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
