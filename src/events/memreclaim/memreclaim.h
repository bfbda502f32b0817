/* SPDX-License-Identifier: GPL-2.0 */
/* The record memreclaim.bpf.c sends for a reclaim stall over the threshold. */
#ifndef MEMRECLAIM_H
#define MEMRECLAIM_H

/* `kind` of a reclaim. User space reads these names, and the counter slots', through the
 * skeleton (`types::…`). */
enum reclaim_kind {
	KIND_DIRECT, /* page allocator direct reclaim (the host is short of memory) */
	KIND_MEMCG,  /* a memory cgroup at its limit reclaims from itself */
	KINDS,
};

/* Counter slots: per kind, reclaims seen (SLOT_SEEN + kind) and reclaims over the threshold
 * (SLOT_SLOW + kind). */
enum counter_slot {
	SLOT_SEEN = 0,
	SLOT_SLOW = KINDS,
	SLOT_SUPPRESSED = 2 * KINDS, /* over the threshold, refused by the rate limit */
	SLOT_RINGBUF_FULL,           /* passed the limit, ring buffer had no room */
	COUNTER_SLOTS,
};

struct reclaim_start {
	__u64 start_ns;
	__u64 gfp_flags;
	__s32 order;
	__u32 kind;
};

struct reclaim_event {
	__u64 time_ns;     /* CLOCK_BOOTTIME, at the end of the reclaim */
	__u64 duration_ns;
	__u64 nr_reclaimed;
	__u64 gfp_flags;
	__u64 memcg_id;
	__u32 pid;         /* tgid */
	__u32 tid;
	__u32 kind;        /* enum reclaim_kind */
	__s32 order;
	__u32 cpu;
	__u32 _pad;
	char comm[16];
	struct cgroup_path memcg_path;
};

#endif /* MEMRECLAIM_H */
