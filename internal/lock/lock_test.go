package lock

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestModes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	// held, then asked: whether the second is granted.
	cases := []struct {
		held, asked Mode
		ok          bool
	}{
		{Shared, Shared, true}, {Shared, Stable, true}, {Shared, Exclusive, true},
		{Stable, Shared, true}, {Stable, Stable, true}, {Stable, Exclusive, false},
		{Exclusive, Shared, true}, {Exclusive, Stable, false}, {Exclusive, Exclusive, false},
	}
	for _, c := range cases {
		h, err := Acquire(path, c.held)
		if err != nil {
			t.Fatalf("hold %v: %v", c.held, err)
		}
		l, err := Acquire(path, c.asked)
		if c.ok != (err == nil) {
			t.Errorf("%v held, %v asked: got err %v, want ok=%v", c.held, c.asked, err, c.ok)
		}
		if err != nil {
			if !errors.Is(err, ErrInUse) {
				t.Errorf("%v held, %v asked: %v does not wrap ErrInUse", c.held, c.asked, err)
			}
			if !strings.Contains(err.Error(), "this process") {
				t.Errorf("conflict does not name the holder: %v", err)
			}
		}
		l.Release()
		h.Release()
	}
	// Released, everything is granted again.
	l, err := Acquire(path, Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
}

// TestKilledHolderFreesFile: the kernel drops a dead holder's locks.
func TestKilledHolderFreesFile(t *testing.T) {
	if os.Getenv("LOCK_HELPER") != "" {
		if _, err := Acquire(os.Getenv("LOCK_HELPER"), Exclusive); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("held\n")
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledHolderFreesFile$")
	cmd.Env = append(os.Environ(), "LOCK_HELPER="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := out.Read(buf); err != nil || string(buf) != "held\n" {
		t.Fatalf("helper did not take the lock: %q %v", buf, err)
	}
	_, err = Acquire(path, Exclusive)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "being written by pid") {
		t.Fatalf("second writer: got %v, want in use naming the pid", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	l, err := Acquire(path, Exclusive)
	if err != nil {
		t.Fatalf("after kill -9 of the holder: %v", err)
	}
	l.Release()
}

// TestReadOnlyFile: a file without write permission can be held.
func TestReadOnlyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	l, err := Acquire(path, Stable)
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
}
