/* SPDX-License-Identifier: GPL-2.0 */
/* The record softirq.bpf.c sends for a long softirq run or a late tick. */
#ifndef SOFTIRQ_H
#define SOFTIRQ_H

#define STACK_DEPTH 48

/* Softirq vectors tracked (a power of two; the kernel has 10), and the `vec` of records that
 * name none. User space reads these names, and the counter slots', through the skeleton
 * (`types::…`). */
enum softirq_vec {
	VEC_SLOTS = 16,
	UNKNOWN_VEC = 0xfffe,  /* a long run whose vector the counts do not tell */
	TICK_GAP_VEC = 0xffff, /* a tick-gap record */
};

/* Counter slots after the latency histograms. */
enum counter_slot {
	SLOT_SUPPRESSED,
	SLOT_RINGBUF_FULL,
	SLOT_TICK_GAPS,
	SLOT_TICK_GAPS_STOLEN, /* late ticks explained by steal time */
	SLOT_PERCPU_MISMATCH,  /* ticks where the per-CPU offsets from BTF read nonsense */
	/* [SLOT_DELAYED, SLOT_DELAYED + VEC_SLOTS): ticks at which a vector had waited, raised and
	 * not run, since the previous tick. */
	SLOT_DELAYED,
	EVENT_SLOTS = SLOT_DELAYED + VEC_SLOTS,
};

struct softirq_event {
	__u64 time_ns;      /* CLOCK_BOOTTIME, at the tick that reported it */
	__u64 duration_ns;  /* long runs: observed so far (at least); tick gaps: the gap */
	__u64 steal_ns;     /* tick gaps: of the gap, the time the hypervisor did not run the CPU */
	__u32 cpu;
	__u32 vec;
	__u32 pid;          /* tgid of the task the softirq interrupted (or ksoftirqd) */
	__u32 tid;
	__s32 stack_bytes;
	__u32 _pad;
	char comm[16];
	__u64 stack[STACK_DEPTH];
};

#endif /* SOFTIRQ_H */
