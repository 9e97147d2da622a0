package diffdisk

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/vmm/nbd"
	"github.com/hibdisk/hibdisk/vmm/nbddisk"
)

// qemuImgFormats are the output formats Convert has qemu-img write: the
// formats users hand images on in, written by QEMU's own code.
var qemuImgFormats = []string{"qcow2", "vmdk", "vhdx", "vdi", "vpc"}

// QemuImgFormat reports whether Convert writes format through qemu-img
// (qcow2, vmdk, vhdx, vdi, vpc), which then must be on PATH.
func QemuImgFormat(format string) bool { return slices.Contains(qemuImgFormats, format) }

// qemuImgExport is the NBD export name qemu-img reads the source from.
const qemuImgExport = "source"

// QemuImgError is qemu-img's failure: Line is the first meaningful line
// of its stderr (the temporary output's name replaced by the output's),
// Err how it exited.
type QemuImgError struct {
	Line string
	Err  error
}

func (e *QemuImgError) Error() string { return e.Line }
func (e *QemuImgError) Unwrap() error { return e.Err }

// multiFileOptions are format options with which qemu-img writes files
// beside the output, named after it: the temporary name would be
// recorded in the image, and a failed or killed run would leave them.
var multiFileOptions = map[string]string{
	"subformat=monolithicFlat":       "writes a separate extent file",
	"subformat=twoGbMaxExtentSparse": "writes separate extent files",
	"subformat=twoGbMaxExtentFlat":   "writes separate extent files",
	"data_file":                      "writes a separate data file",
}

// checkQemuImgOptions refuses format options and compression for an
// output hibdisk writes itself, and the options Convert cannot keep
// atomic (see multiFileOptions) or that make qemu-img print help instead
// of converting.
func checkQemuImgOptions(opts ConvertOptions) error {
	if !QemuImgFormat(opts.Format) {
		if opts.FormatOptions != "" || opts.Compressed {
			return fmt.Errorf("format options and compression are qemu-img's, for %s outputs, not %s: %w",
				strings.Join(qemuImgFormats, ", "), cmp.Or(opts.Format, disklayer.FormatHibdisk), disklayer.ErrInvalid)
		}
		return nil
	}
	if opts.FormatOptions == "" {
		return nil
	}
	for _, o := range strings.Split(opts.FormatOptions, ",") {
		key, _, _ := strings.Cut(o, "=")
		if o == "help" || o == "?" {
			return fmt.Errorf("option %q: list %s's options with: qemu-img create -f %s -o help: %w", o, opts.Format, opts.Format, disklayer.ErrInvalid)
		}
		why, ok := multiFileOptions[o]
		if !ok {
			why, ok = multiFileOptions[key]
		}
		if ok {
			return fmt.Errorf("option %q %s, which convert cannot publish atomically: use qemu-img convert: %w", o, why, disklayer.ErrInvalid)
		}
	}
	return nil
}

// convertQemu has qemu-img write src's view as opts.Format at tmp:
// hibdisk's NBD server serves src read-only over one end of a socket
// pair, qemu-img reads the other end (an inherited fd, so no socket
// path exists that another process could connect to or a killed run
// could leave behind). Holes are reported by NBD block status, so
// qemu-img neither reads nor writes them. The output is synced before
// Convert publishes it (qemu-img writes it with cache=unsafe), unless
// opts.Cache is CacheUnsafe.
func convertQemu(src disklayer.Layer, tmp, dst string, opts ConvertOptions) error {
	mine, theirs, err := socketPair()
	if err != nil {
		return fmt.Errorf("qemu-img convert: %w", err)
	}
	srv, err := nbd.NewServer(nbddisk.Export(qemuImgExport, src, nbddisk.ExportOptions{ReadOnly: true}))
	if err != nil {
		mine.Close()
		theirs.Close()
		return fmt.Errorf("qemu-img convert: %w", err)
	}
	go srv.ServeConn(mine)
	runErr := runQemuImg(qemuImgArgs(tmp, opts), theirs, src.Size(), tmp, dst, opts.Progress)
	// qemu-img has exited and its end is closed: the connection ends.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && runErr == nil {
		runErr = fmt.Errorf("qemu-img convert: stop the NBD server: %w", err)
	}
	if runErr != nil || !opts.Cache.synced() {
		return runErr
	}
	return syncFile(tmp)
}

// qemuImgArgs is the command line converting the NBD export on fd 3 to
// tmp. Only "-o help" makes qemu-img succeed without writing tmp, and
// checkQemuImgOptions refuses it.
func qemuImgArgs(tmp string, opts ConvertOptions) []string {
	args := []string{"convert", "--image-opts", "-O", opts.Format}
	if opts.Progress != nil {
		args = append(args, "-p")
	}
	if opts.Compressed {
		args = append(args, "-c")
	}
	if opts.FormatOptions != "" {
		args = append(args, "-o", opts.FormatOptions)
	}
	src := "driver=raw,file.driver=nbd,file.server.type=fd,file.server.str=3,file.export=" + qemuImgExport
	return append(args, src, tmp)
}

// socketPair is a connected pair of unix stream sockets: one for this
// process's NBD server, one for the child.
func socketPair() (net.Conn, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "nbd-server")
	defer f.Close() // FileConn holds its own descriptor
	c, err := net.FileConn(f)
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return c, os.NewFile(uintptr(fds[1]), "nbd-client"), nil
}

// runQemuImg runs qemu-img with conn as its fd 3 (and closes conn). The
// child gets SIGKILL when this process dies (Pdeathsig), so a killed
// convert does not leave qemu-img writing. Pdeathsig fires when the
// thread that started the child exits: the goroutine keeps its thread
// until the child is reaped.
func runQemuImg(args []string, conn *os.File, total int64, tmp, dst string, progress func(done, total int64)) error {
	var stderr bytes.Buffer
	cmd := exec.Command("qemu-img", args...)
	cmd.ExtraFiles = []*os.File{conn}
	cmd.Stderr = &stderr
	if progress != nil {
		cmd.Stdout = &progressWriter{total: total, report: progress}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err := cmd.Start()
	conn.Close() // the child holds its own copy
	if errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("qemu-img convert: qemu-img is not installed (apt-get install qemu-utils): %w", err)
	}
	if err != nil {
		return fmt.Errorf("qemu-img convert: %w", err)
	}
	if err := cmd.Wait(); err != nil {
		line := firstMeaningfulLine(stderr.String())
		if line == "" {
			line = "qemu-img convert: " + err.Error()
		}
		return &QemuImgError{Line: strings.ReplaceAll(line, tmp, dst), Err: err}
	}
	return nil
}

// firstMeaningfulLine is the first non-empty line of qemu-img's stderr
// that is not a warning, else the first warning.
func firstMeaningfulLine(s string) string {
	var warning string
	for line := range strings.Lines(s) {
		line = strings.TrimSpace(line)
		switch {
		case line == "":
		case strings.Contains(line, "warning:"):
			warning = cmp.Or(warning, line)
		default:
			return line
		}
	}
	return warning
}

// progressWriter takes qemu-img -p's output, "    (12.34/100%)\r"
// redrawn in place, and reports it as bytes of the source.
type progressWriter struct {
	total  int64
	report func(done, total int64)
	buf    []byte
}

func (w *progressWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexAny(w.buf, "\r\n")
		if i < 0 {
			return len(p), nil
		}
		w.line(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

func (w *progressWriter) line(s string) {
	s = strings.TrimSpace(s)
	pct, opened := strings.CutPrefix(s, "(")
	pct, closed := strings.CutSuffix(pct, "/100%)")
	if !opened || !closed {
		return
	}
	f, err := strconv.ParseFloat(pct, 64)
	if err != nil {
		return
	}
	done := w.total
	if f < 100 {
		done = int64(f / 100 * float64(w.total))
	}
	w.report(done, w.total)
}

// syncFile makes the complete output durable before it is published.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("qemu-img convert: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}
