package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// needTool returns tool's path; without it the test fails in CI (which
// installs it through scripts/deps.sh) and is skipped elsewhere.
func needTool(t *testing.T, tool, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing: scripts/deps.sh installs it (Debian package %s)", tool, pkg)
		}
		t.Skipf("%s is missing: apt-get install %s (or run scripts/deps.sh as root)", tool, pkg)
	}
	return path
}

// TestDescribeCommandsIsHelp: the usage completion and man read is what
// -h prints, for every command and subcommand: the synopsis line and each
// flag with its placeholder.
func TestDescribeCommandsIsHelp(t *testing.T) {
	docs, err := describeCommands(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var names []string
	for _, d := range leaves(docs) {
		names = append(names, d.name)
		out := mustHib(t, dir, append(strings.Fields(d.name), "-h")...)
		first, _, _ := strings.Cut(d.synopsis, "\n")
		if want := strings.TrimSpace("usage: hibdisk " + d.name + " " + first); !strings.HasPrefix(out, want+"\n") {
			t.Errorf("%s -h begins %q, describeCommands has %q", d.name, strings.SplitN(out, "\n", 2)[0], want)
		}
		for _, f := range d.flags {
			if want := strings.TrimSpace("  -" + f.name + " " + f.placeholder); !strings.Contains(out, want) {
				t.Errorf("%s -h lacks %q:\n%s", d.name, want, out)
			}
		}
		if got := strings.Count(out, "\n  -"); got != len(d.flags) {
			t.Errorf("%s -h lists %d flags, describeCommands %d", d.name, got, len(d.flags))
		}
	}
	for _, want := range []string{"create", "serve", "hib ps", "ds subscribe", "vm run", "completion", "man"} {
		if !slices.Contains(names, want) {
			t.Errorf("describeCommands lacks %q: %v", want, names)
		}
	}
}

func TestSynopsisChoices(t *testing.T) {
	got := synopsisChoices("[-u] -b NEWBASE [-F raw|hibdisk] [--output=json|human] bash|zsh FILE\n  VALUE: a|b")
	want := map[string][]string{"-F": {"raw", "hibdisk"}, "-output": {"json", "human"}, "": {"bash", "zsh"}}
	if len(got) != len(want) {
		t.Errorf("synopsisChoices = %v, want %v", got, want)
	}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Errorf("synopsisChoices[%q] = %v, want %v", k, got[k], w)
		}
	}
}

// completionScript writes `hibdisk completion SHELL` to a file.
func completionScript(t *testing.T, shell string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hibdisk."+shell)
	if err := os.WriteFile(path, []byte(mustHib(t, t.TempDir(), "completion", shell)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// completionCases are words typed (the last one being completed) and
// candidates the completion must offer and must not.
var completionCases = []struct {
	words     []string
	want, not []string
}{
	{[]string{"hibdisk", "se"}, []string{"serve"}, []string{"create"}},
	{[]string{"hibdisk", ""}, []string{"create", "hib", "help", "completion", "man"}, nil},
	{[]string{"hibdisk", "serve", "--re"}, []string{"--read-only", "--reconnect-delay"}, []string{"--socket"}},
	{[]string{"hibdisk", "serve", "x.db", "--li"}, []string{"--listen"}, nil},
	{[]string{"hibdisk", "hib", "p"}, []string{"ps"}, []string{"show"}},
	{[]string{"hibdisk", "help", "hib", "s"}, []string{"show", "signals"}, nil},
	{[]string{"hibdisk", "vm", "r"}, []string{"run", "resume"}, []string{"hibernate"}},
	{[]string{"hibdisk", "ds", "subscribe", "--o"}, []string{"--owner", "--once", "--overwrite"}, nil},
	{[]string{"hibdisk", "convert", "-O", "q"}, []string{"qcow2"}, []string{"raw"}},
	{[]string{"hibdisk", "completion", ""}, []string{"bash", "zsh"}, nil},
	{[]string{"hibdisk", "create", "-b", "al"}, []string{"alpha.db"}, []string{"beta.db"}},
	{[]string{"hibdisk", "create", "--sector-size", "512", "be"}, []string{"beta.db"}, nil},
	{[]string{"hibdisk", "hib", "ps", "--json", ""}, []string{"alpha.db", "beta.db"}, nil},
}

// TestBashCompletion sources the script in bash and completes as bash
// would: COMP_WORDS and COMP_CWORD set, _hibdisk called, COMPREPLY read.
func TestBashCompletion(t *testing.T) {
	bash := needTool(t, "bash", "bash")
	script := completionScript(t, "bash")
	dir := t.TempDir()
	for _, f := range []string{"alpha.db", "beta.db"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range completionCases {
		cmd := exec.Command(bash, append([]string{"--norc", "--noprofile", "-c",
			`source "$0" && COMP_WORDS=("$@") && COMP_CWORD=$(($# - 1)) && _hibdisk && printf '%s\n' "${COMPREPLY[@]}" && complete -p hibdisk >&2`,
			script}, tc.words...)...)
		cmd.Dir = dir
		checkCompletion(t, cmd, tc.words, tc.want, tc.not)
	}
}

// TestZshCompletion checks the zsh script's syntax (zsh -n), then runs its
// _hibdisk in zsh with words and CURRENT set and zsh's completion builtins
// replaced by functions that print what they are given (the real ones
// work only inside the line editor).
func TestZshCompletion(t *testing.T) {
	zsh := needTool(t, "zsh", "zsh")
	script := completionScript(t, "zsh")
	if out, err := exec.Command(zsh, "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
	dir := t.TempDir()
	for _, tc := range completionCases {
		cmd := exec.Command(zsh, append([]string{"-f", "-c", `
compdef() { print -r -- "compdef $*" >&2 }
compadd() { [[ $1 == -- ]] && shift; print -rl -- "$@" }
_describe() { local -a described; described=("${(@P)4}"); print -rl -- "${described[@]%%:*}" }
_files() { print -rl -- *(N) }
source "$1" && shift && words=("$@") && CURRENT=$# && _hibdisk`}, append([]string{"zsh", script}, tc.words...)...)...)
		cmd.Dir = dir
		for _, f := range []string{"alpha.db", "beta.db"} {
			if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// compadd and _describe filter by the word typed in zsh; the
		// stand-ins do not, so only what must be offered is checked.
		checkCompletion(t, cmd, tc.words, tc.want, nil)
	}
}

func checkCompletion(t *testing.T, cmd *exec.Cmd, words, want, not []string) {
	t.Helper()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(words, " "), err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "_hibdisk hibdisk") {
		t.Errorf("%s: the script does not register _hibdisk for hibdisk: stderr %q", cmd.Args[0], stderr.String())
	}
	got := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s %q: completions %q lack %q", cmd.Args[0], strings.Join(words, " "), got, w)
		}
	}
	for _, n := range not {
		if slices.Contains(got, n) {
			t.Errorf("%s %q: completions %q include %q", cmd.Args[0], strings.Join(words, " "), got, n)
		}
	}
}

// TestZshCompletionInteractive types into a real interactive zsh (on a
// pseudo-terminal, through zsh/zpty) with compinit and the script in
// $fpath, presses Tab, and reads the edited line back through a widget.
func TestZshCompletionInteractive(t *testing.T) {
	zsh := needTool(t, "zsh", "zsh")
	fdir, dir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(fdir, "_hibdisk"), []byte(mustHib(t, dir, "completion", "zsh")), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"alpha.db", "beta.db"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct{ typed, want string }{
		{"hibdisk ser", "hibdisk serve "},
		{"hibdisk serve --read-o", "hibdisk serve --read-only "},
		{"hibdisk hib p", "hibdisk hib ps "},
		{"hibdisk vm hi", "hibdisk vm hibernate "},
		{"hibdisk convert -O vm", "hibdisk convert -O vmdk "},
		{"hibdisk create -b al", "hibdisk create -b alpha.db "},
		{"hibdisk completion z", "hibdisk completion zsh "},
	}
	lines := filepath.Join(t.TempDir(), "lines")
	var keys strings.Builder
	for _, c := range cases {
		keys.WriteString(c.typed + "\t\x18\x04\x15") // Tab, ^X^D (print the line), ^U (kill it)
	}
	// The keys are typed once zle reads them (at the prompt): typed
	// earlier, the terminal's cooked mode would eat ^D and ^U.
	rc := filepath.Join(t.TempDir(), "rc.zsh")
	if err := os.WriteFile(rc, []byte(`bindkey -e
fpath=(`+shellQuote(fdir)+` $fpath)
autoload -U compinit && compinit -u -D
cd `+shellQuote(dir)+`
dumpbuf() { print -r -- "$BUFFER" >> `+shellQuote(lines)+` }
zle -N dumpbuf && bindkey '^X^D' dumpbuf
PS1='READY> '
`), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, zsh, "-f", "-c", `
zmodload zsh/zpty || exit 1
zpty z 'zsh -f -i' || exit 1
zpty -w z "source ${(q)1}"
zpty -r z out '*READY> *' || exit 1
zpty -w -n z "$3"
for i in {1..300}; do
  [[ -f $2 ]] && (( $(wc -l < $2) >= $4 )) && break
  sleep 0.1
done
zpty -d z`, "zsh", rc, lines, keys.String(), strconv.Itoa(len(cases)))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("zsh: %v\n%s", err, out)
	}
	data, err := os.ReadFile(lines)
	if err != nil {
		t.Fatalf("zsh printed no line: %v", err)
	}
	got := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	for i, c := range cases {
		if i >= len(got) {
			t.Errorf("%q<Tab>: no line read back", c.typed)
		} else if got[i] != c.want {
			t.Errorf("%q<Tab> = %q, want %q", c.typed, got[i], c.want)
		}
	}
}
