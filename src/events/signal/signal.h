/* SPDX-License-Identifier: GPL-2.0 */
#ifndef SIGNAL_H
#define SIGNAL_H

/* Counter slots: [1, 64) count generated signals by number (watched ones only). User space
 * reads these names through the skeleton (`types::counter_slot`). */
enum counter_slot {
	SLOT_SUPPRESSED = 64, /* watched, refused by the rate limit */
	SLOT_RINGBUF_FULL,
	COUNTER_SLOTS,
};

struct signal_event {
	__u64 time_ns;        /* CLOCK_BOOTTIME */
	__u64 target_memcg_id;
	__s32 sig;
	__s32 code;           /* si_code: who sent it (SI_USER, SI_KERNEL, ...) */
	__s32 result;         /* delivered, ignored, already pending, ... */
	__s32 group;          /* sent to the whole thread group */
	__u32 sender_pid;     /* tgid of the current task */
	__u32 sender_tid;
	__u32 target_pid;     /* tgid of the receiving task */
	__u32 target_tid;
	char sender_comm[16];
	char target_comm[16];
	/* Read in the kernel: a task killed right at its container's start may take its cgroup
	 * with it before user space could map the id to a container. */
	struct cgroup_path target_memcg_path;
};

#endif /* SIGNAL_H */
