package nbd

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoStorageDependencies keeps the NBD server independent of the
// storage packages: it speaks to storage only through Backend.
func TestNoStorageDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps printed only %q", deps)
	}
	for _, dep := range deps {
		if strings.Contains(dep, "sqlite") || strings.Contains(dep, "disklayer") {
			t.Errorf("vmm/nbd depends on %s", dep)
		}
	}
}
