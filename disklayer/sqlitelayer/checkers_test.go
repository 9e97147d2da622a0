package sqlitelayer_test

// checkedLayer's sqlitelayer.Check runs every registered TableCheck: link
// the packages that register them, so the layers these tests touch are
// checked for the hibernate metadata, datastore and vm_state too.
import _ "github.com/hibdisk/hibdisk/internal/checkers"
