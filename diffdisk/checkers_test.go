package diffdisk_test

// The tests of package diffdisk check every layer they touch with Check
// (checkOnCleanup). Package diffdisk cannot import the packages that
// register the rest of the check, but this external test file shares the
// test binary with them, so linking them here makes Check the whole check.
import _ "github.com/hibdisk/hibdisk/internal/checkers"
