package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
)

// The usage of every command as data, for `hibdisk completion` and
// `hibdisk man`. It is read from the same definitions -h prints: each
// command runs with -h, and env.usage receives the flagSet it built (its
// name, synopsis and flags), so a flag added to a command appears in the
// completion scripts and the man page with nothing else to edit.

// cmdDoc is one command, or one subcommand of a group, as -h shows it.
type cmdDoc struct {
	name     string // as typed: "create", "hib ps"
	summary  string // the listing's one line; empty for ds and vm subcommands
	synopsis string // after "hibdisk NAME"; may span lines
	flags    []flagDoc
	subs     []cmdDoc // a group's subcommands (hib, ds, vm)
}

// flagDoc is one flag as -h prints it: "-name placeholder" and its help.
type flagDoc struct {
	name        string // without dashes
	placeholder string // "" for a boolean flag
	help        string // the usage text with its "(default ...)"
	choices     []string
}

// subcommandGroups lists the subcommands of each group command: the
// commands whose -h prints a listing instead of flags.
var subcommandGroups = map[string]func() map[string]string{ // name -> summary
	"hib": func() map[string]string {
		m := map[string]string{}
		for n, c := range hibCommands {
			m[n] = c.summary
		}
		return m
	},
	"ds": func() map[string]string { return namesOnly(sortedKeys(dsCommands)) },
	"vm": func() map[string]string { return namesOnly(sortedKeys(vmCommands)) },
	"cache": func() map[string]string {
		return namesOnly(sortedKeys(cacheCommands))
	},
}

func namesOnly(names []string) map[string]string {
	m := map[string]string{}
	for _, n := range names {
		m[n] = ""
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// describeCommands returns every command, sorted by name, with its
// synopsis and flags, and a group's subcommands.
func describeCommands(ctx context.Context) ([]cmdDoc, error) {
	var docs []cmdDoc
	for _, n := range commandNames() {
		c := commands[n]
		d := cmdDoc{name: n, summary: c.summary}
		if fs := usageOf(ctx, c, "-h"); fs != nil {
			d.synopsis, d.flags = fs.synopsis, flagDocs(fs)
		} else if subs, ok := subcommandGroups[n]; ok {
			m := subs()
			for _, s := range sortedKeys(m) {
				fs := usageOf(ctx, c, s, "-h")
				if fs == nil {
					return nil, fmt.Errorf("hibdisk %s %s -h printed no flags: a subcommand parses its flags with newFlags and parseArgs", n, s)
				}
				d.subs = append(d.subs, cmdDoc{name: n + " " + s, summary: m[s], synopsis: fs.synopsis, flags: flagDocs(fs)})
			}
		} else {
			return nil, fmt.Errorf("hibdisk %s -h printed no flags: a command parses its flags with newFlags and parseArgs, a group is listed in subcommandGroups", n)
		}
		docs = append(docs, d)
	}
	return docs, nil
}

// usageOf runs c with args (ending in -h) and returns the flags its -h
// printed, or nil when it printed none.
func usageOf(ctx context.Context, c command, args ...string) *flagSet {
	var got *flagSet
	e := &env{stdout: io.Discard, stderr: io.Discard, usage: func(fs *flagSet) { got = fs }}
	_ = c.run(ctx, e, args) // -h ends in flag.ErrHelp or nil; the flags are what counts
	return got
}

// flagDocs lists fs's flags in -h's order with -h's text: each flag is
// printed by the flag package alone and split into its parts.
func flagDocs(fs *flagSet) []flagDoc {
	choices := synopsisChoices(fs.synopsis)
	var docs []flagDoc
	fs.VisitAll(func(f *flag.Flag) {
		placeholder, _ := flag.UnquoteUsage(f)
		one := flag.NewFlagSet("", flag.ContinueOnError)
		one.Var(f.Value, f.Name, f.Usage)
		var b strings.Builder
		one.SetOutput(&b)
		one.PrintDefaults()
		// "  -name placeholder\t..." or "  -name placeholder\n    \t...":
		// the help follows the first tab; its lines are joined by "\n    \t".
		_, help, _ := strings.Cut(b.String(), "\t")
		help = strings.ReplaceAll(strings.TrimRight(help, "\n"), "\n    \t", "\n")
		docs = append(docs, flagDoc{name: f.Name, placeholder: placeholder, help: help, choices: choices["-"+f.Name]})
	})
	return docs
}

// choiceList is a synopsis word that lists the values a flag or an
// argument takes: "raw|hibdisk", "bash|zsh".
var choiceList = regexp.MustCompile(`^[a-z0-9]+(\|[a-z0-9]+)+$`)

// synopsisChoices reads the values a synopsis lists: "-O raw|hibdisk"
// and "--output=json|human" give choices["-O"] and choices["-output"], a
// list standing alone (the first argument) gives
// choices[""].
func synopsisChoices(synopsis string) map[string][]string {
	choices := map[string][]string{}
	line, _, _ := strings.Cut(synopsis, "\n")
	words := strings.Fields(strings.NewReplacer("[", " ", "]", " ", "...", " ").Replace(line))
	for i, w := range words {
		key := ""
		if name, list, ok := strings.Cut(w, "="); ok && strings.HasPrefix(name, "-") {
			key, w = "-"+strings.TrimLeft(name, "-"), list // --output=json|human
		} else if i > 0 && strings.HasPrefix(words[i-1], "-") && !strings.Contains(words[i-1], "=") {
			key = "-" + strings.TrimLeft(words[i-1], "-")
		}
		if !choiceList.MatchString(w) {
			continue
		}
		if _, seen := choices[key]; !seen {
			choices[key] = strings.Split(w, "|")
		}
	}
	return choices
}

// leaves is every command that takes flags: the commands and the groups'
// subcommands, without the groups.
func leaves(docs []cmdDoc) []cmdDoc {
	var out []cmdDoc
	for _, d := range docs {
		if d.subs == nil {
			out = append(out, d)
		}
		out = append(out, d.subs...)
	}
	return out
}

// dashed is a flag as the docs spell it: -x for one letter, --name else
// (the flag package takes either).
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}
