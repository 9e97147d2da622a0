package diffdisk

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/memlayer"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

// TestProgressWriter: qemu-img -p's redrawn "(N/100%)" lines, split
// anywhere across writes, become bytes of the source, ending at total.
func TestProgressWriter(t *testing.T) {
	var got [][2]int64
	w := &progressWriter{total: 1000, report: func(done, total int64) { got = append(got, [2]int64{done, total}) }}
	out := "    (0.00/100%)\r    (50.05/100%)\r    (100.00/100%)\r\n"
	for i := 0; i < len(out); i += 7 {
		if _, err := w.Write([]byte(out[i:min(i+7, len(out))])); err != nil {
			t.Fatal(err)
		}
	}
	want := [][2]int64{{0, 1000}, {500, 1000}, {1000, 1000}}
	if !slices.Equal(got, want) {
		t.Errorf("reports %v, want %v", got, want)
	}
}

func TestFirstMeaningfulLine(t *testing.T) {
	for in, want := range map[string]string{
		"\nqemu-img: warning: w\nqemu-img: the error\nmore\n": "qemu-img: the error",
		"qemu-img: warning: only a warning\n":                 "qemu-img: warning: only a warning",
		"":                                                    "",
	} {
		if got := firstMeaningfulLine(in); got != want {
			t.Errorf("firstMeaningfulLine(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestConvertQemuImg: Convert writes a qcow2 of a memlayer through
// qemu-img; qemu-img's failure is a *QemuImgError naming dst, not the
// temporary file, and leaves nothing; options are refused for hibdisk
// outputs before anything is written.
func TestConvertQemuImg(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-img")
	dir := t.TempDir()
	src, err := memlayer.New(8<<20, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.WriteAt([]byte("hibdisk"), 3<<20); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "out.qcow2")
	if err := Convert(src, dst, ConvertOptions{Format: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "info", dst).CombinedOutput(); err != nil || !strings.Contains(string(out), "file format: qcow2") {
		t.Errorf("qemu-img info: %v: %s", err, out)
	}
	bad := filepath.Join(dir, "bad.qcow2")
	err = Convert(src, bad, ConvertOptions{Format: "qcow2", FormatOptions: "cluster_size=3"})
	var qe *QemuImgError
	if !errors.As(err, &qe) || !strings.HasPrefix(qe.Line, "qemu-img: "+bad+": ") || strings.Contains(err.Error(), "partial") {
		t.Errorf("bad cluster size: %v", err)
	}
	err = Convert(src, bad, ConvertOptions{Compressed: true})
	if !errors.Is(err, disklayer.ErrInvalid) {
		t.Errorf("compressed hibdisk output: %v, want ErrInvalid", err)
	}
	if names, _ := os.ReadDir(dir); len(names) != 1 {
		t.Errorf("files left: %v, want only out.qcow2", names)
	}
}
