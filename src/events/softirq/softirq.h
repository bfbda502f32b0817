/* SPDX-License-Identifier: GPL-2.0 */
/* The record softirq.bpf.c sends for a long softirq run or a late tick. */
#ifndef SOFTIRQ_H
#define SOFTIRQ_H

#define STACK_DEPTH 48

/* Softirq vectors tracked (a power of two; the kernel has 10). */
#define VEC_SLOTS 16
/* Counter slots after the latency histograms. */
#define SLOT_SUPPRESSED 0
#define SLOT_RINGBUF_FULL 1
#define SLOT_TICK_GAPS 2
#define SLOT_TICK_GAPS_STOLEN 3 /* late ticks explained by steal time */
#define SLOT_PERCPU_MISMATCH 4  /* ticks where the per-CPU offsets from BTF read nonsense */
/* [SLOT_DELAYED, SLOT_DELAYED + VEC_SLOTS): ticks at which a vector had waited, raised and not
 * run, since the previous tick. */
#define SLOT_DELAYED 5
#define EVENT_SLOTS (SLOT_DELAYED + VEC_SLOTS)

/* `vec` of a tick-gap record, and of a long run whose vector the counts do not tell. */
#define TICK_GAP_VEC 0xffff
#define UNKNOWN_VEC 0xfffe

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
