//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"golang.org/x/sys/unix"
)

// taskSelfHibernate is guestproto.TaskSelfHibernate.
func taskSelfHibernate(params map[string]string) error {
	dev, err := findDisk(params["hib"])
	if err != nil {
		return err
	}
	if err := tryResume(dev); err != nil {
		return err
	}
	if params["expect-resume"] == "1" {
		return fmt.Errorf("no hibernation image was resumed from %s", dev)
	}
	note("booted", 1)
	if err := swapon(dev); err != nil {
		return err
	}
	if err := os.WriteFile("/sys/power/disk", []byte("shutdown"), 0); err != nil {
		return fmt.Errorf("set /sys/power/disk: %w", err)
	}
	return selfHibernateLoop(params)
}

// tryResume names dev as the resume device; the kernel resumes an image
// it finds there at once (this call then never returns in this boot).
func tryResume(dev string) error {
	mm, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "dev"))
	if err != nil {
		return fmt.Errorf("device number of %s: %w", dev, err)
	}
	if err := os.WriteFile("/sys/power/resume", bytes.TrimSpace(mm), 0); err != nil {
		return fmt.Errorf("write /sys/power/resume: %w", err)
	}
	return nil
}

func swapon(dev string) error {
	p, err := unix.BytePtrFromString(dev)
	if err != nil {
		return err
	}
	if _, _, errno := unix.Syscall(unix.SYS_SWAPON, uintptr(unsafe.Pointer(p)), 0, 0); errno != 0 {
		return fmt.Errorf("swapon %s: %w", dev, errno)
	}
	return nil
}

func selfHibernateLoop(params map[string]string) error {
	size, err := intParam(params, "mem", 8<<20)
	if err != nil {
		return err
	}
	interval, err := intParam(params, "interval-ms", 50)
	if err != nil {
		return err
	}
	last, err := intParam(params, "count", 15)
	if err != nil {
		return err
	}
	every, err := intParam(params, "every", 5)
	if err != nil {
		return err
	}
	const chunk = 1 << 20
	if size < chunk || size%chunk != 0 || every < 1 {
		return fmt.Errorf("mem=%d every=%d: want a positive multiple of %d and every >= 1", size, every, chunk)
	}
	seed := params["seed"]
	data := guestproto.PatternBytes(seed, 0, int(size))
	want := make([]byte, chunk)
	for n := int64(1); n <= last; n++ {
		at := (n % (size / chunk)) * chunk
		guestproto.Pattern(seed, at, want)
		if !bytes.Equal(data[at:at+chunk], want) {
			return fmt.Errorf("count %d: the data in memory at %d changed", n, at)
		}
		say("%s%d", guestproto.CountPrefix, n)
		time.Sleep(time.Duration(interval) * time.Millisecond)
		if n%every == 0 && n < last {
			if err := hibernateSelf(n); err != nil {
				return err
			}
		}
	}
	return nil
}

// hibernateSelf writes the image and powers off; it returns in the
// resumed machine.
func hibernateSelf(n int64) error {
	note("hibernating", n)
	unix.Sync()
	unix.IoctlSetInt(1, unix.TCSBRK, 1)
	if err := os.WriteFile("/sys/power/state", []byte("disk"), 0); err != nil {
		return fmt.Errorf("hibernate at count %d: %w", n, err)
	}
	note("resumed", n)
	if b, err := os.ReadFile("/sys/power/resume"); err == nil {
		note("resume-device", strings.TrimSpace(string(b)))
	}
	return nil
}
