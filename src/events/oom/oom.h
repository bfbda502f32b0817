/* SPDX-License-Identifier: GPL-2.0 */
/* The record oom.bpf.c sends for every OOM victim; the skeleton generates its Rust twin. */
#ifndef OOM_H
#define OOM_H

/* Counter slots. */
#define SLOT_GLOBAL 0       /* victims of a host-wide (or cpuset/mempolicy) OOM */
#define SLOT_MEMCG 1        /* victims of a memory cgroup at its limit */
#define SLOT_RINGBUF_FULL 2 /* events the ring buffer had no room for */
#define SLOT_SUPPRESSED 3   /* victims not recorded because of the rate limit */
#define COUNTER_SLOTS 4

#define CONSTRAINT_GLOBAL 0
#define CONSTRAINT_MEMCG 1

/* How many ancestors of the victim's memcg are checked for being at their limit. */
#define MEMCG_ANCESTORS 8

struct oom_event {
	__u64 time_ns;                /* CLOCK_BOOTTIME */
	__u64 trigger_memcg_id;
	__u64 victim_memcg_id;
	__u64 victim_memcg_usage_pages;
	__u64 victim_memcg_limit_pages;
	__u64 victim_memcg_failcnt;
	__u64 constraint_memcg_id;    /* the memcg found at its limit (CONSTRAINT_MEMCG) */
	__u64 constraint_usage_pages;
	__u64 constraint_limit_pages;
	__u64 victim_total_vm_pages;
	__u32 trigger_pid;            /* tgid */
	__u32 trigger_tid;
	__u32 victim_pid;
	__u32 victim_tid;
	__u32 victim_uid;
	__u32 constraint;
	__u32 cpu;
	__s32 victim_oom_score_adj;
	char trigger_comm[16];
	char victim_comm[16];
	struct cgroup_path victim_memcg_path;
	struct cgroup_path constraint_memcg_path;
};

#endif /* OOM_H */
