package inspect

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// partitionedImage lays out a disk with the real partitioning tool
// (sgdisk for gpt, sfdisk for mbr): partition 1 an ext4 image, partition
// 2 a FAT16 image, partition 3 empty.
func partitionedImage(t *testing.T, table string) string {
	t.Helper()
	src := sourceTree(t, true)
	ext := makeImage(t, KindExt4, src)  // 32 MiB
	fat := makeImage(t, KindFAT16, src) // 32 MiB
	disk := filepath.Join(t.TempDir(), table+".img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 100<<20); err != nil {
		t.Fatal(err)
	}
	switch table {
	case "gpt":
		testenv.RequireTools(t, "gdisk", "sgdisk")
		sh(t, "sgdisk", "-n", "1:2048:+32M", "-t", "1:8300", "-c", "1:root",
			"-n", "2:0:+32M", "-t", "2:0700", "-c", "2:data", "-n", "3:0:+8M", "-t", "3:8200", disk)
	case "mbr":
		testenv.RequireTools(t, "fdisk", "sfdisk")
		cmd := exec.Command("sfdisk", "--quiet", disk)
		cmd.Stdin = strings.NewReader("label: dos\nstart=2048, size=65536, type=83\nstart=67584, size=65536, type=6\nstart=133120, size=16384, type=82\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sfdisk: %v\n%s", err, out)
		}
	}
	place := func(img string, off int64) {
		data, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(disk, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	place(ext, 2048*512)
	place(fat, 67584*512)
	return disk
}

func TestPartitionTables(t *testing.T) {
	for _, table := range []string{"gpt", "mbr"} {
		t.Run(table, func(t *testing.T) {
			im := openImage(t, partitionedImage(t, table))
			if im.TableType() != table {
				t.Fatalf("TableType = %q, want %q", im.TableType(), table)
			}
			parts, err := im.Partitions()
			if err != nil {
				t.Fatal(err)
			}
			if len(parts) != 3 {
				t.Fatalf("Partitions = %+v, want 3", parts)
			}
			wantFS := []Kind{KindExt4, KindFAT16, KindNone}
			wantStart := []int64{2048 * 512, 67584 * 512, 133120 * 512}
			for i, p := range parts {
				if p.Index != i+1 || p.FS != wantFS[i] || p.Start != wantStart[i] {
					t.Errorf("partition %d = %+v, want index %d start %d fs %q", i, p, i+1, wantStart[i], wantFS[i])
				}
			}
			if table == "gpt" && (parts[0].Name != "root" || parts[0].Type != "Linux filesystem") {
				t.Errorf("gpt partition 1 = %+v, want name root, type Linux filesystem", parts[0])
			}
			if table == "mbr" && (parts[0].TypeID != "0x83" || parts[1].Type != "FAT16") {
				t.Errorf("mbr partitions = %+v, want types 0x83 and FAT16", parts)
			}
			if _, err := im.DefaultPartition(); !errors.Is(err, ErrNoPartition) {
				t.Errorf("DefaultPartition with two filesystems: %v, want ErrNoPartition", err)
			}
			for index, want := range map[int]string{1: "hello, world\n", 2: "hello, world\n"} {
				f, err := im.FS(index)
				if err != nil {
					t.Fatal(err)
				}
				r, err := f.Open("/hello.txt")
				if err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 64)
				n, _ := r.Read(buf)
				r.Close()
				if string(buf[:n]) != want {
					t.Errorf("partition %d /hello.txt = %q", index, buf[:n])
				}
			}
			if _, err := im.FS(3); !errors.Is(err, ErrNoFilesystem) {
				t.Errorf("swap partition: %v, want ErrNoFilesystem", err)
			}
			if _, err := im.FS(9); !errors.Is(err, ErrNoPartition) || !strings.Contains(err.Error(), "partitions 1, 2, 3") {
				t.Errorf("partition 9: %v, want ErrNoPartition listing 1, 2, 3", err)
			}
		})
	}
}
