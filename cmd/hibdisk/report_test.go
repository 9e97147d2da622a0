package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"image"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// chromium runs headless Chromium on page with extra flags and returns
// its standard output.
func chromium(t *testing.T, dir, page string, flags ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--user-data-dir=" + filepath.Join(dir, "chromium-profile")}, flags...)
	args = append(args, "file://"+page)
	cmd := exec.CommandContext(ctx, "chromium", args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", flags, err, errOut.String())
	}
	// Console messages (with --enable-logging=stderr): a refused load or
	// a script error would show here.
	for _, bad := range []string{"Refused to", "Failed to load", "Uncaught", "net::ERR_"} {
		if strings.Contains(errOut.String(), bad) {
			t.Errorf("chromium %v reported %q:\n%s", flags, bad, errOut.String())
		}
	}
	return out.String()
}

// TestReport: `hibdisk report` of an ext4 base and a diff layer that
// changed files, with hibernate snapshots and a datastore entry, loaded
// in headless Chromium: the page shows the chains, the differences, the
// file changes, the snapshots and the datastore, and loads nothing.
func TestReport(t *testing.T) {
	testenv.RequireTools(t, "chromium", "chromium")
	dir := testDir(t)
	img := ext4Image(t, dir)
	mustHib(t, dir, "convert", "-O", "hibdisk", img, "base.db")
	mustHib(t, dir, "hib", "import", filepath.Join(testdata, "hib-before.json"), "base.db")
	changed := changeExt4(t, dir, img)
	overlay(t, dir, "base.db", img, changed, "diff.db")
	mustHib(t, dir, "hib", "import", filepath.Join(testdata, "hib-after.json"), "diff.db")
	mustHib(t, dir, "ds", "publish", "--owner", "agent", "diff.db", "u32", "svc.count", "42")

	mustHib(t, dir, "report", "-o", "report.html", "base.db", "diff.db")
	page := filepath.Join(dir, "report.html")
	html, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	if stdout := mustHib(t, dir, "report", "base.db", "diff.db"); len(stdout) < len(html)/2 {
		t.Errorf("report to stdout: %d bytes, to a file %d", len(stdout), len(html))
	}
	for _, external := range []string{"http://", "https://", "src=\"", "<link", "@import", "url("} {
		if bytes.Contains(html, []byte(external)) {
			t.Errorf("the page refers to something outside it (%q)", external)
		}
	}

	dom := chromium(t, dir, page, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom")
	if !strings.Contains(dom, `data-resources="0"`) || !strings.Contains(dom, `data-problems="0"`) || !strings.Contains(dom, `data-ready="1"`) {
		body := dom
		if i := strings.Index(body, "<body"); i >= 0 {
			body = body[i:min(len(body), i+200)]
		}
		t.Errorf("the page's own check did not pass (resources loaded, script errors or refused loads): %s", body)
	}
	for _, want := range []string{
		"The disks differ",
		"base.db", "diff.db",
		"partition 0 (ext4)", "1 added, 1 removed, 2 changed",
		"/etc/new.conf", "/hello.txt", "/etc/hostname", "/etc/motd",
		`class="differs"`,         // the row of differences under the strips
		"Between the snapshots",   // hib diff of the two snapshots
		"svc.count",               // the datastore entry diff.db added
		"processes", "RAM stored", // the snapshot summaries
		"hibernate files differ",      // diff.db's snapshot is stored in its hibernate file
		`<span class="swatch" style=`, // the chain tables' colours
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the page lacks %q", want)
		}
	}

	shot := filepath.Join(dir, "report.png")
	chromium(t, dir, page, "--window-size=1200,1600", "--screenshot="+shot)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if b := m.Bounds(); b.Dx() != 1200 || b.Dy() != 1600 {
		t.Errorf("screenshot is %v, want 1200x1600", b)
	}
	if n := colours(m); n < 8 {
		t.Errorf("screenshot has %d colours: the page did not render", n)
	}

	// map --svg: the strip alone, a well-formed SVG document.
	mustHib(t, dir, "map", "--svg", "map.svg", "diff.db")
	svg, err := os.ReadFile(filepath.Join(dir, "map.svg"))
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(svg))
	rects := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("map.svg is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	if rects < 3 || !bytes.Contains(svg, []byte("layer 1: ")) {
		t.Errorf("map.svg: %d rects, legend present %v", rects, bytes.Contains(svg, []byte("layer 1: ")))
	}
}

// colours counts the distinct colours of m, up to 64.
func colours(m image.Image) int {
	seen := map[[4]uint32]bool{}
	b := m.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 7 {
		for x := b.Min.X; x < b.Max.X; x += 7 {
			r, g, bl, a := m.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
			if len(seen) >= 64 {
				return len(seen)
			}
		}
	}
	return len(seen)
}
