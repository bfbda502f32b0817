/* SPDX-License-Identifier: GPL-2.0 */
/* The record oom.bpf.c sends for every OOM victim; the skeleton generates its Rust twin. */
#ifndef OOM_H
#define OOM_H

/* Counter slots. User space reads these names, and those of oom_scope, through the skeleton
 * (`types::…`). */
enum counter_slot {
	SLOT_GLOBAL,       /* victims of a host-wide (or cpuset/mempolicy) OOM */
	SLOT_MEMCG,        /* victims of a memory cgroup at its limit */
	SLOT_RINGBUF_FULL, /* events the ring buffer had no room for */
	SLOT_SUPPRESSED,   /* victims not recorded because of the rate limit */
	COUNTER_SLOTS,
};

/* `constraint` of a record (not the kernel's enum oom_constraint, whose CONSTRAINT_MEMCG is 3). */
enum oom_scope {
	OOM_GLOBAL,
	OOM_MEMCG, /* a memory cgroup at its limit */
};

/* How many ancestors of the victim's memcg are checked for being at their limit. */
#define MEMCG_ANCESTORS 8

struct oom_event {
	__u64 time_ns;                /* CLOCK_BOOTTIME */
	__u64 trigger_memcg_id;
	__u64 victim_memcg_id;
	__u64 victim_memcg_usage_pages;
	__u64 victim_memcg_limit_pages;
	__u64 victim_memcg_failcnt;
	__u64 constraint_memcg_id;    /* the memcg found at its limit (OOM_MEMCG) */
	__u64 constraint_usage_pages;
	__u64 constraint_limit_pages;
	__u64 victim_total_vm_pages;
	__u32 trigger_pid;            /* tgid */
	__u32 trigger_tid;
	__u32 victim_pid;
	__u32 victim_tid;
	__u32 victim_uid;
	__u32 constraint;             /* enum oom_scope */
	__u32 cpu;
	__s32 victim_oom_score_adj;
	char trigger_comm[16];
	char victim_comm[16];
	struct cgroup_path victim_memcg_path;
	struct cgroup_path constraint_memcg_path;
};

#endif /* OOM_H */
