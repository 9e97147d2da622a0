package qemu_test

// The tests of package qemu check the layers they make with
// internal/checktest. Package qemu's own tests cannot import the other
// packages that register checks (they import qemu's dependencies, not
// qemu, but internal/checkers imports qemu); this external test file
// shares the test binary with them and links them in.
import _ "github.com/hibdisk/hibdisk/internal/checkers"
