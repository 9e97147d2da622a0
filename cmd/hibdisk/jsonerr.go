package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Errors under --json: a command asked for JSON output (--json or
// --output=json anywhere before a "--") reports its failure as one JSON
// object on stderr instead of the "hibdisk CMD: ..." line, so a script
// reads both outcomes the same way:
//
//	{"command":"info","error":"open \"x.db\": no such file or directory","exit":1}
//
// The message is the one the line would carry, without the command
// prefix; exit is the process's exit status (1 failure, 2 bad usage, or
// the command's own, such as compare's).

// jsonError is the object printed on stderr.
type jsonError struct {
	Command string `json:"command"`
	Error   string `json:"error"`
	Exit    int    `json:"exit"`
}

// wantsJSON reports whether a command line asks for JSON output.
func wantsJSON(args []string) bool {
	for i, a := range args {
		if a == "--" {
			return false
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			continue
		}
		switch name {
		case "json":
			if !hasValue || value == "true" || value == "1" {
				return true
			}
		case "output":
			if hasValue && value == "json" || !hasValue && i+1 < len(args) && args[i+1] == "json" {
				return true
			}
		}
	}
	return false
}

// printError prints a failed command's error: one line "hibdisk CMD:
// MSG", or under --json one JSON object.
func printError(w io.Writer, asJSON bool, cmd, msg string, code int) {
	if asJSON {
		b, _ := json.Marshal(jsonError{Command: cmd, Error: msg, Exit: code})
		fmt.Fprintf(w, "%s\n", b)
		return
	}
	fmt.Fprintf(w, "hibdisk %s: %s\n", cmd, msg)
}

// outputFormat adds --json and qemu-img's --output=human|json to fs;
// call the returned function after parsing to learn whether JSON was
// asked for.
func outputFormat(fs *flagSet) func() (bool, error) {
	asJSON := fs.Bool("json", false, "print the result as JSON (same as --output=json)")
	output := fs.String("output", "human", "output format: human or json (as qemu-img's --output)")
	return func() (bool, error) {
		switch *output {
		case "human":
			return *asJSON, nil
		case "json":
			return true, nil
		}
		return false, usagef("--output %q: want human or json", *output)
	}
}
