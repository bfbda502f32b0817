/* SPDX-License-Identifier: GPL-2.0 */
/* The record hungtask.bpf.c sends for every hung task the kernel reports. */
#ifndef HUNGTASK_H
#define HUNGTASK_H

#define STACK_DEPTH 32

/* Counter slots; user space reads these names through the skeleton (`types::counter_slot`). */
enum counter_slot {
	SLOT_REPORTED,     /* every sched_process_hang */
	SLOT_SUPPRESSED,   /* refused by the rate limit */
	SLOT_RINGBUF_FULL, /* passed the limit, ring buffer had no room */
	COUNTER_SLOTS,
};

struct hung_event {
	__u64 time_ns;          /* CLOCK_BOOTTIME */
	__u64 memcg_id;
	__u64 last_switch_time; /* jiffies: when the detector first saw the task not switching */
	__u64 jiffies_now;
	__u32 pid;              /* tgid */
	__u32 tid;
	__u32 hz;               /* CONFIG_HZ, 0 if the kernel config was not readable */
	__s32 stack_bytes;      /* bpf_get_task_stack result: bytes filled, or <0 on error */
	__u32 state;            /* task->__state */
	__u32 _pad;
	char comm[16];
	__u64 stack[STACK_DEPTH];
	struct cgroup_path memcg_path;
};

#endif /* HUNGTASK_H */
