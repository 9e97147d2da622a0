package guestproto

// TaskSelfHibernate is a machine that hibernates itself with Linux's own
// swsusp into the swap area on the disk named by hib (made by mkswap on
// the host). It first writes that disk's major:minor to
// /sys/power/resume, which resumes an image found there (the task then
// never gets further: the resumed machine goes on where it stopped) and
// otherwise names the device the next hibernation writes to. It notes
// "booted=1", swaps on the disk, keeps mem bytes of Pattern(seed) in
// memory as TaskCounter does, and counts from 1 every interval-ms; after
// every count that is a multiple of every it notes "hibernating=N" and
// writes "disk" to /sys/power/state (with /sys/power/disk "shutdown",
// so the machine powers off once the image is written). When that write
// returns the machine has been resumed: it notes "resumed=N" and counts
// on. It stops with PASS after count counts. With expect-resume=1 a boot
// that finds no image fails.
const TaskSelfHibernate = "self-hibernate"
