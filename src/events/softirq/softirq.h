/* SPDX-License-Identifier: GPL-2.0 */
/* The record softirq.bpf.c sends for a softirq that ran longer than the threshold. */
#ifndef SOFTIRQ_H
#define SOFTIRQ_H

#define STACK_DEPTH 32

/* Softirq vectors tracked (a power of two; the kernel has 10). */
#define VEC_SLOTS 16
/* Long-run counter slots, after the latency histograms: [0, VEC_SLOTS) runs over the threshold
 * by vector, then the rest. */
#define SLOT_SUPPRESSED (VEC_SLOTS + 0)
#define SLOT_RINGBUF_FULL (VEC_SLOTS + 1)
#define SLOT_TICK_GAPS (VEC_SLOTS + 2)
#define SLOT_TICK_GAPS_STOLEN (VEC_SLOTS + 3) /* late ticks explained by steal time */
#define EVENT_SLOTS (VEC_SLOTS + 4)

/* `vec` of a tick-gap record. */
#define TICK_GAP_VEC 0xffff

struct softirq_event {
	__u64 time_ns;      /* CLOCK_BOOTTIME, at the exit */
	__u64 duration_ns;
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
