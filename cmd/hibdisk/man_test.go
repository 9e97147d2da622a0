package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const manPage = "../../docs/hibdisk.1"

// TestManPage: docs/hibdisk.1 is what `hibdisk man` writes today (with
// the page's own date), so the checked-in page never lags the commands'
// usage; go test -update (or make man) rewrites it.
func TestManPage(t *testing.T) {
	manPage, err := filepath.Abs(manPage) // hib changes directory
	if err != nil {
		t.Fatal(err)
	}
	docs, err := describeCommands(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if _, err := updateMan(manPage, docs, ""); err != nil {
			t.Fatal(err)
		}
		return
	}
	old, err := os.ReadFile(manPage)
	if err != nil {
		t.Fatalf("%v (run make man)", err)
	}
	m := thDate.FindSubmatch(old)
	if m == nil {
		t.Fatalf("docs/hibdisk.1 has no .TH HIBDISK 1 DATE line: run make man")
	}
	var got strings.Builder
	writeMan(&got, docs, string(m[1]))
	if diff := cmp.Diff(string(old), got.String()); diff != "" {
		t.Errorf("docs/hibdisk.1 is stale: run make man (-checked in +generated):\n%s", diff)
	}
}

// TestManKeepsDate: make man leaves an unchanged page alone, date and
// all, and dates a changed one today.
func TestManKeepsDate(t *testing.T) {
	docs, err := describeCommands(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	page := filepath.Join(t.TempDir(), "hibdisk.1")
	var b strings.Builder
	writeMan(&b, docs, "2001-02-03")
	if err := os.WriteFile(page, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := updateMan(page, docs, ""); err != nil || changed {
		t.Fatalf("updateMan of an unchanged page: changed %v, %v", changed, err)
	}
	docs[0].summary += " (changed)"
	if changed, err := updateMan(page, docs, ""); err != nil || !changed {
		t.Fatalf("updateMan of a changed page: changed %v, %v", changed, err)
	}
	data, _ := os.ReadFile(page)
	if m := thDate.FindSubmatch(data); m == nil || string(m[1]) == "2001-02-03" {
		t.Errorf("a changed page kept its old date:\n%s", data[:200])
	}
}

// TestManPageRenders renders the page with groff (and mandoc's linter
// when it is there): no warnings, and every command is in the text.
func TestManPageRenders(t *testing.T) {
	groff := needTool(t, "groff", "groff-base")
	dir := t.TempDir()
	page := filepath.Join(dir, "hibdisk.1")
	if err := os.WriteFile(page, []byte(mustHib(t, dir, "man")), 0o644); err != nil {
		t.Fatal(err)
	}
	// -ww: every warning; -rHY=0: no hyphenation, so names stay whole;
	// -P-cbou: plain text without overstriking or colours.
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-rHY=0", "-P-cbou", page)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("groff: %v\n%s", err, stderr.String())
	}
	text := strings.Join(strings.Fields(string(out)), " ")
	docs, err := describeCommands(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range append(docs, leaves(docs)...) {
		if !strings.Contains(text, "hibdisk "+d.name) && !strings.Contains(text, " "+d.name+" ") {
			t.Errorf("the rendered page does not name %q", d.name)
		}
	}
	for _, want := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS", "SEE ALSO",
		"hibdisk serve", "read-only", "qemu-img(1)", "qemu-nbd(1)", "nbdkit(1)", "sqlite3(1)", "base ← booted ← job-42"} {
		// groff renders - as U+2010 (hyphen) or U+2212 (minus).
		if !strings.Contains(strings.NewReplacer("\u2010", "-", "\u2212", "-").Replace(text), want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}

	mandoc := needTool(t, "mandoc", "mandoc")
	if out, err := exec.Command(mandoc, "-T", "lint", page).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("mandoc -T lint: %v\n%s", err, out)
	}
}

// TestManDescriptionIsREADME: the page's DESCRIPTION is README.md's first
// paragraph.
func TestManDescriptionIsREADME(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	paras := strings.Split(string(readme), "\n\n")
	if len(paras) < 2 || strings.TrimSpace(paras[1]) != readmeIntro {
		t.Errorf("README's first paragraph is not man.go's readmeIntro; copy it over:\n%s", paras[1])
	}
}

func TestRoffText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"--read-only and read-only", `\-\-read\-only and read-only`},
		{".dot first", `\&.dot first`},
		{`a\b`, `a\eb`},
		{"base ← top", `base \[u2190] top`},
		{"[-F raw|hibdisk]", `[\-F raw|hibdisk]`},
		{strings.Repeat("word ", 20), strings.Repeat("word ", 15) + "word\n" + strings.TrimSpace(strings.Repeat("word ", 4))},
	} {
		if got := roffText(tc.in); got != tc.want {
			t.Errorf("roffText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
