// Package depcheck holds the test of the house's floors: which of the
// module's packages may import which (go-containerregistry's
// internal/depcheck, as a table).
package depcheck

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/hibdisk/hibdisk/"

// allowed lists, for every package of the module, the module packages it
// may import (non-test imports). A package missing from the table fails
// the test: a new package takes its floor explicitly.
//
// The floors, bottom up:
//
//	internal/lock, internal/store, vmm/nbd   nothing of the module
//	internal/s3test                          versitygw for tests: nothing of the module
//	internal/testbytes                       tests' buffer fills: nothing of the module
//	inspect/jbd2                             ext4 journal replay: nothing of the module
//	internal/schema                          the format, over store
//	disklayer                                the layer contract: nothing of the module
//	disklayer/sqlitelayer                    the SQLite layer format
//	disklayer/openvmmlayer                   OpenVMM's disklayer_sqlite files
//	disklayer/{memlayer,rawlayer,layertest}  other layers, conformance
//	vmm/nbddisk                              a layer exported over NBD
//	diffdisk                                 chains; convert (qemu-img reads over NBD)
//	hibfile, datastore, inspect              what a layer chain holds
//	remote/chunks                            verified lazy reads of blobs: nothing of the module
//	vmm/qemu                                 machines
//	remote                                   sealed chains in S3 buckets: push, pull, ls-remote, lazy bases
//	internal/checkers, internal/checktest    every check linked in, for tests
//	report                                   HTML of what the CLI gathered: nothing of the module
//	cmd/hibdisk                              the CLI: no internal/ package
//	test/qemu/testguest, test/qemu/cmd/guestkit  the test guest's kit, for tests and make run/demo
var allowed = map[string][]string{
	"internal/lock":              nil,
	"internal/store":             nil,
	"internal/store/storetest":   nil,
	"internal/store/faultfs":     nil,
	"internal/testenv":           nil,
	"internal/testbytes":         nil,
	"internal/schema":            {"internal/store"},
	"vmm/nbd":                    nil,
	"vmm/qemu/guestkit":          nil,
	"vmm/qemu/debimage":          nil,
	"disklayer":                  nil,
	"disklayer/sqlitelayer":      {"disklayer", "internal/lock", "internal/schema", "internal/store"},
	"disklayer/openvmmlayer":     {"disklayer", "internal/store"},
	"internal/openvmmtest":       {"internal/testenv"},
	"disklayer/memlayer":         {"disklayer"},
	"disklayer/rawlayer":         {"disklayer", "internal/lock"},
	"disklayer/layertest":        {"disklayer", "disklayer/memlayer", "internal/testbytes"},
	"disklayer/nbdlayer":         {"disklayer", "vmm/nbd"},
	"diffdisk":                   {"disklayer", "disklayer/nbdlayer", "disklayer/openvmmlayer", "disklayer/rawlayer", "disklayer/sqlitelayer", "vmm/nbd", "vmm/nbddisk"},
	"hibfile":                    {"diffdisk", "disklayer", "disklayer/sqlitelayer", "hibfile/swsusp", "internal/schema", "internal/store"},
	"hibfile/swsusp":             nil,
	"datastore":                  {"diffdisk", "disklayer", "disklayer/sqlitelayer", "internal/store"},
	"inspect":                    {"diffdisk", "disklayer", "disklayer/sqlitelayer", "inspect/jbd2"},
	"inspect/jbd2":               nil,
	"inspect/jbd2/jbd2test":      {"internal/testenv"},
	"vmm/nbddisk":                {"disklayer", "vmm/nbd"},
	"vmm/qemu":                   {"diffdisk", "disklayer", "disklayer/sqlitelayer", "hibfile", "vmm/nbd", "vmm/nbddisk"},
	"internal/checkers":          {"datastore", "hibfile", "vmm/qemu"},
	"internal/checktest":         {"diffdisk", "disklayer/sqlitelayer"},
	"cmd/hibdisk":                {"datastore", "diffdisk", "disklayer", "disklayer/sqlitelayer", "hibfile", "hibfile/swsusp", "inspect", "remote", "remote/chunks", "report", "vmm/nbd", "vmm/nbddisk", "vmm/qemu"},
	"remote":                     {"diffdisk", "disklayer", "disklayer/sqlitelayer", "remote/chunks"},
	"internal/s3test":            nil,
	"report":                     nil,
	"remote/chunks":              nil,
	"test/qemu":                  nil,
	"test/qemu/guest":            {"test/qemu/guest/guestproto"},
	"test/qemu/guest/guestproto": nil,
	"test/qemu/testguest":        {"vmm/qemu/guestkit"},
	"test/qemu/cmd/guestkit":     {"test/qemu/testguest"},
	"internal/depcheck":          nil,
}

// sqliteFree are packages that must not link SQLite at all, directly or
// through another package: the NBD server and its disk adapter, the
// layer contract, its pure-Go implementations, the conformance suite,
// the ext4 journal replay and the chunk reader of remote blobs. (A
// dependency whose path contains "sqlite" counts, so
// disklayer/sqlitelayer does too.)
var sqliteFree = []string{"report", "hibfile/swsusp", "vmm/nbd", "vmm/nbddisk", "disklayer", "disklayer/memlayer", "disklayer/rawlayer", "disklayer/layertest", "disklayer/nbdlayer", "inspect/jbd2", "remote/chunks"}

func goList(t *testing.T, format string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-f", format, module+"...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// TestFloors: every package imports only what its row allows, nothing
// imports cmd/ or test/ (except test/qemu/guest its own protocol), and
// every package has a row.
func TestFloors(t *testing.T) {
	lines := goList(t, "{{.ImportPath}}:{{range .Imports}} {{.}}{{end}}")
	seen := map[string]bool{}
	for _, line := range lines {
		pkg, imports, _ := strings.Cut(line, ":")
		pkg = strings.TrimPrefix(pkg, module)
		seen[pkg] = true
		may, ok := allowed[pkg]
		if !ok {
			t.Errorf("package %s has no row in the floors table: give it one", pkg)
			continue
		}
		for _, imp := range strings.Fields(imports) {
			rel, ours := strings.CutPrefix(imp, module)
			if !ours {
				continue
			}
			if !slices.Contains(may, rel) {
				t.Errorf("%s imports %s, which its floor does not allow", pkg, rel)
			}
		}
	}
	// The table describes the house as it is: no row for a package that
	// is gone (or a typo that would allow nothing).
	for pkg := range allowed {
		if !seen[pkg] {
			t.Errorf("the floors table has a row for %s, which is not a package of the module", pkg)
		}
	}
}

// TestNoSQLite: the packages that must not link SQLite do not, through
// any dependency.
func TestNoSQLite(t *testing.T) {
	for _, line := range goList(t, "{{.ImportPath}}:{{range .Deps}} {{.}}{{end}}") {
		pkg, deps, _ := strings.Cut(line, ":")
		if !slices.Contains(sqliteFree, strings.TrimPrefix(pkg, module)) {
			continue
		}
		fields := strings.Fields(deps)
		if len(fields) < 10 {
			t.Errorf("go list -deps of %s printed only %q", pkg, fields)
		}
		for _, d := range fields {
			if strings.Contains(d, "sqlite") {
				t.Errorf("%s depends on %s", pkg, d)
			}
		}
	}
}
