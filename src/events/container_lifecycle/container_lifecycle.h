/* SPDX-License-Identifier: GPL-2.0 */
#ifndef CONTAINER_LIFECYCLE_H
#define CONTAINER_LIFECYCLE_H

#define CGROUP_PATH_MAX 256

/* Counter slots; user space reads these names through the skeleton (`types::counter_slot`). */
enum counter_slot {
	SLOT_MKDIR,
	SLOT_RMDIR,
	SLOT_RINGBUF_FULL,
	COUNTER_SLOTS,
};

struct cgroup_event {
	__u64 time_ns;       /* CLOCK_BOOTTIME */
	__u64 cgroup_id;     /* kernfs inode of the cgroup directory */
	__u32 hierarchy_id;
	__u32 level;
	__u8 removed;        /* 0 mkdir, 1 rmdir */
	__u8 pad[7];
	char path[CGROUP_PATH_MAX];
};

#endif /* CONTAINER_LIFECYCLE_H */
