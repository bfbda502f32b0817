// SPDX-License-Identifier: GPL-2.0
/* softirq: a CPU that spent longer than a threshold in one softirq handler run
 * (tp_btf/softirq_entry → softirq_exit). Softirqs do not nest on a CPU, so one per-CPU start
 * stamp is enough. The hot path is one per-CPU lookup and a clock read per entry and exit;
 * only runs over the threshold go further (counter, rate limit, stack, ring buffer). */
#include "bianque.bpf.h"
#include "softirq.h"

const volatile __u64 threshold_ns = 10ULL * 1000 * 1000;
const volatile __u32 max_events_per_second = 100;

struct softirq_event _event_type = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct softirq_start);
} running SEC(".maps");

SEC("tp_btf/softirq_entry")
int BPF_PROG(bq_softirq_entry, unsigned int vec)
{
	__u32 zero = 0;
	struct softirq_start *s = bpf_map_lookup_elem(&running, &zero);

	if (s) {
		s->start_ns = bpf_ktime_get_ns();
		s->vec = vec;
	}
	return 0;
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(bq_softirq_exit, unsigned int vec)
{
	__u32 zero = 0;
	struct softirq_start *s = bpf_map_lookup_elem(&running, &zero);
	struct softirq_event *e;
	__u64 pid_tgid, duration;

	if (!s || !s->start_ns || s->vec != vec)
		return 0;
	duration = bpf_ktime_get_ns() - s->start_ns;
	s->start_ns = 0;
	if (duration < threshold_ns)
		return 0;
	counter_add(vec < VEC_SLOTS ? vec : VEC_SLOTS - 1, 1);
	if (!rate_limit_pass(max_events_per_second)) {
		counter_add(SLOT_SUPPRESSED, 1);
		return 0;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		counter_add(SLOT_RINGBUF_FULL, 1);
		return 0;
	}
	pid_tgid = bpf_get_current_pid_tgid();
	e->time_ns = bpf_ktime_get_boot_ns();
	e->duration_ns = duration;
	e->cpu = bpf_get_smp_processor_id();
	e->vec = vec;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->stack_bytes = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&events));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
