/* SPDX-License-Identifier: GPL-2.0 */
#ifndef IOTRACER_H
#define IOTRACER_H

/* Slots of the `stats` array (what the kernel side could not count). */
#define IOT_STAT_MAP_FULL 0    /* a (process, file) entry could not be created: `io` was full */
#define IOT_STAT_NO_BIO 1      /* a request completed whose first bio was not seen queued */
#define IOT_STAT_INFLIGHT_FULL 2 /* a read/write syscall could not be tracked */
#define IOT_STAT_STALLS_FULL 3  /* an IO wait over the threshold could not be kept: `stalls` was full */
#define IOT_STAT_SLOTS 4

/* io_key.kind */
#define IOT_KIND_UNKNOWN 0 /* disk IO whose file could not be told (dev = ino = 0) */
#define IOT_KIND_FILE 1    /* a regular file: dev = its superblock's s_dev, ino = its inode */
#define IOT_KIND_BLOCKDEV 2 /* a block device file (or the device's own page cache, e.g.
			     * filesystem metadata): dev = the device's number, ino = 0 */

/* Operation index into the [2] arrays. */
#define IOT_READ 0
#define IOT_WRITE 1

/* io_val.flags */
#define IOT_FLAG_DIRECT 1   /* seen with O_DIRECT */
#define IOT_FLAG_BUFFERED 2 /* seen without O_DIRECT */

#define IOT_NAME_LEN 48

/* One process (tgid) and one file. */
struct io_key {
	__u32 pid;
	__u32 dev;  /* kernel encoding: major << 20 | minor */
	__u64 ino;
	__u32 kind;
	__u32 _pad;
};

struct io_val {
	/* Filesystem side: read/write syscalls on the file (bytes returned, syscall time). */
	__u64 fs_bytes[2];
	__u64 fs_ops[2];
	__u64 fs_ns[2];
	__u64 fs_max_ns[2];
	/* Disk side: bios queued on the watched disk for the file. */
	__u64 disk_bytes[2];
	__u64 disk_ops[2];
	/* Requests completed whose first bio was this entry's: queue→complete and issue→complete. */
	__u64 q2c_ns[2];
	__u64 d2c_ns[2];
	__u64 q2c_max_ns[2];
	__u64 d2c_max_ns[2];
	__u64 lat_ops[2];
	__u64 memcg_id;
	__u32 flags;
	__u32 _pad;
	char comm[16];
	char name[IOT_NAME_LEN]; /* the file's dentry name when a syscall created the entry */
};

#define IOT_STACK_DEPTH 32

/* The longest IO wait (a task switched out in io_schedule, `in_iowait`) of one thread. */
struct io_stall {
	__u32 pid;
	__u32 tid;
	__u32 cpu;       /* the CPU it was switched out on */
	__s32 stack_bytes; /* bpf_get_task_stack result: bytes filled, or < 0 */
	__u64 max_ns;
	__u64 total_ns;  /* all its waits over the threshold */
	__u64 count;
	__u64 memcg_id;
	char comm[16];
	__u64 stack[IOT_STACK_DEPTH]; /* kernel stack of the longest wait */
};

#endif /* IOTRACER_H */
