/* SPDX-License-Identifier: GPL-2.0 */
/* The record memreclaim.bpf.c sends for a reclaim stall over the threshold. */
#ifndef MEMRECLAIM_H
#define MEMRECLAIM_H

#define KIND_DIRECT 0 /* page allocator direct reclaim (the host is short of memory) */
#define KIND_MEMCG 1  /* a memory cgroup at its limit reclaims from itself */
#define KINDS 2

/* Counter slots: per kind, reclaims seen and reclaims over the threshold. */
#define SLOT_SEEN(kind) (kind)
#define SLOT_SLOW(kind) (KINDS + (kind))
#define SLOT_SUPPRESSED (2 * KINDS + 0)   /* over the threshold, refused by the rate limit */
#define SLOT_RINGBUF_FULL (2 * KINDS + 1) /* passed the limit, ring buffer had no room */
#define COUNTER_SLOTS (2 * KINDS + 2)

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
	__u32 kind;
	__s32 order;
	__u32 cpu;
	__u32 _pad;
	char comm[16];
	struct cgroup_path memcg_path;
};

#endif /* MEMRECLAIM_H */
