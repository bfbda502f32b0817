// SPDX-License-Identifier: GPL-2.0
/* softirq: delay from a softirq being raised to its handler starting, per softirq vector and
 * CPU (tp_btf irq/softirq_raise, softirq_entry). A vector raised again while already pending
 * keeps its first raise time. Series = vector; rows of the per-CPU counters give the CPU. */
#include "bianque.bpf.h"
#include "histogram.bpf.h"

#define SOFTIRQ_SLOTS 16

struct pending {
	__u64 ts[SOFTIRQ_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pending);
} raised SEC(".maps");

SEC("tp_btf/softirq_raise")
int BPF_PROG(bq_softirq_raise, unsigned int vec)
{
	__u32 zero = 0;
	struct pending *p;

	if (vec >= SOFTIRQ_SLOTS)
		return 0;
	/* The check above may be compiled on a copy of the register: mask the one used as the
	 * index so the verifier sees it bounded (SOFTIRQ_SLOTS is a power of two). */
	asm volatile("%0 &= 15" : "+r"(vec));
	p = bpf_map_lookup_elem(&raised, &zero);
	if (p && !p->ts[vec])
		p->ts[vec] = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(bq_softirq_entry, unsigned int vec)
{
	__u32 zero = 0;
	struct pending *p;
	__u64 ts, now;

	if (vec >= SOFTIRQ_SLOTS)
		return 0;
	/* The check above may be compiled on a copy of the register: mask the one used as the
	 * index so the verifier sees it bounded (SOFTIRQ_SLOTS is a power of two). */
	asm volatile("%0 &= 15" : "+r"(vec));
	p = bpf_map_lookup_elem(&raised, &zero);
	if (!p)
		return 0;
	ts = p->ts[vec];
	if (!ts)
		return 0;
	p->ts[vec] = 0;
	now = bpf_ktime_get_ns();
	if (now > ts)
		hist_add(vec, now - ts);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
