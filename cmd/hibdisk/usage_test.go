package main

import (
	"runtime"
	"strings"
	"testing"
)

// TestHelpPrintsCommandUsage: `hibdisk help CMD`, `CMD -h` and `CMD
// --help` print that command's synopsis and flags on stdout, exit 0,
// nothing on stderr.
func TestHelpPrintsCommandUsage(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want []string // in stdout
	}{
		{[]string{"help", "create"}, []string{"usage: hibdisk create [-s SIZE]", "\nflags:\n", "-sector-size int"}},
		{[]string{"create", "-h"}, []string{"usage: hibdisk create [-s SIZE]", "-sector-size int"}},
		{[]string{"create", "x.db", "--help"}, []string{"usage: hibdisk create [-s SIZE]"}},
		{[]string{"help", "hib", "import"}, []string{"usage: hibdisk hib import [-s SIZE] FILE.json LAYER\n", "-s string"}},
		{[]string{"hib", "help", "ps"}, []string{"usage: hibdisk hib ps [--json] LAYER", "-json"}},
		{[]string{"help", "vm", "resume"}, []string{"usage: hibdisk vm resume", "-top string"}},
		{[]string{"help", "ds", "subscribe"}, []string{"usage: hibdisk ds subscribe", "-overwrite"}},
		{[]string{"help", "ds"}, []string{"usage: hibdisk ds publish|"}},
		{[]string{"help", "vm"}, []string{"usage: hibdisk vm run [flags] DISK..."}},
		{[]string{"help"}, []string{"usage: hibdisk COMMAND", "\n  version "}},
	} {
		r := hib(t, dir, tc.args...)
		if r.code != 0 || r.stderr != "" {
			t.Errorf("hibdisk %s: exit %d, stderr %q; want exit 0 and nothing on stderr", strings.Join(tc.args, " "), r.code, r.stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("hibdisk %s: stdout does not contain %q:\n%s", strings.Join(tc.args, " "), w, r.stdout)
			}
		}
		if strings.Contains(r.stdout, "commands:\n") && tc.args[len(tc.args)-1] != "help" {
			t.Errorf("hibdisk %s printed the general usage:\n%s", strings.Join(tc.args, " "), r.stdout)
		}
	}
}

// TestUsageErrorsOneLine: an unknown flag, a wrong argument count and a
// mistyped command each end in exactly one line on stderr (exit 2) that
// says where to look, or which command was meant.
func TestUsageErrorsOneLine(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string // the whole of stderr
	}{
		{[]string{"create", "-x", "x.db"}, "hibdisk create: flag provided but not defined: -x (see hibdisk help create)\n"},
		{[]string{"info", "a.db", "--nope"}, "hibdisk info: flag provided but not defined: -nope (see hibdisk help info)\n"},
		{[]string{"hib", "import", "-x"}, "hibdisk hib import: flag provided but not defined: -x (see hibdisk help hib import)\n"},
		{[]string{"info"}, "hibdisk info: want 1 argument(s), got 0 (see hibdisk help info)\n"},
		{[]string{"serv"}, "hibdisk: unknown command \"serv\"; did you mean \"serve\"?\n"},
		{[]string{"comit"}, "hibdisk: unknown command \"comit\"; did you mean \"commit\"?\n"},
		{[]string{"hlep"}, "hibdisk: unknown command \"hlep\"; did you mean \"help\"?\n"},
		{[]string{"conv"}, "hibdisk: unknown command \"conv\"; did you mean \"convert\"?\n"},
		{[]string{"comp"}, "hibdisk: unknown command \"comp\"; did you mean \"compact\" or \"compare\" or \"completion\"?\n"},
		{[]string{"nonsense"}, "hibdisk: unknown command \"nonsense\" (see hibdisk help)\n"},
		{[]string{"hib", "improt"}, "hibdisk hib: unknown subcommand \"improt\"; did you mean \"import\"?\n"},
		{[]string{"ds", "subscrib"}, "hibdisk ds: unknown subcommand \"subscrib\"; did you mean \"subscribe\"?\n"},
		{[]string{"vm", "rsume"}, "hibdisk vm: unknown vm command \"rsume\"; did you mean \"resume\"?\n"},
	} {
		r := hib(t, dir, tc.args...)
		if r.code != 2 || r.stderr != tc.want || r.stdout != "" {
			t.Errorf("hibdisk %s: exit %d, stdout %q, stderr %q; want exit 2, stderr %q", strings.Join(tc.args, " "), r.code, r.stdout, r.stderr, tc.want)
		}
	}
}

// TestVersion: `hibdisk version` and `hibdisk --version` print the same
// lines: the module version, the Go version, the SQLite modules.
func TestVersion(t *testing.T) {
	dir := t.TempDir()
	out := mustHib(t, dir, "version")
	if got := mustHib(t, dir, "--version"); got != out {
		t.Errorf("--version printed %q, version printed %q", got, out)
	}
	for _, want := range []string{"hibdisk version ", "\ngo: " + runtime.Version() + " ", "\nsqlite: github.com/ncruces/go-sqlite3 v"} {
		if !strings.Contains(out, want) {
			t.Errorf("version output lacks %q:\n%s", want, out)
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"serve", "serve", 0}, {"serv", "serve", 1}, {"hlep", "help", 1}, {"ifno", "info", 1},
		{"", "ls", 2}, {"cmopare", "compare", 1}, {"kitten", "sitting", 3},
	} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
