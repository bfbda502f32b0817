// SPDX-License-Identifier: GPL-2.0
/* memreclaim: a task stalled in direct reclaim (page allocator) or memcg reclaim (its memory
 * cgroup at the limit) for longer than a threshold. Begin stamps the task in a hash map; end
 * measures, counts, and sends only stalls over the threshold through the rate limit. */
#include "bianque.bpf.h"
#include "memreclaim.h"

const volatile __u64 threshold_ns = 900ULL * 1000 * 1000;
const volatile __u32 max_events_per_second = 100;

/* Globals of the record and enum types, so that the skeleton generates them for user space. */
struct reclaim_event _event_type = {};
enum reclaim_kind _reclaim_kind_type = 0;
enum counter_slot _counter_slot_type = 0;

/* 64 KiB holds hundreds of these rate-limited records; a ring buffer is resident memory of the
 * agent (mapped into it), so rare-event tracers keep theirs small. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

/* The reclaim a task is in, kept with the task (freed with it, so nothing can leak): a lookup
 * is a pointer walk, where an (LRU) hash took several hundred ns per begin on this hot path. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct reclaim_start);
} in_reclaim SEC(".maps");

static __always_inline void reclaim_begin(__u32 kind, int order, gfp_t gfp)
{
	struct reclaim_start *s = bpf_task_storage_get(&in_reclaim, bpf_get_current_task_btf(), 0,
						       BPF_LOCAL_STORAGE_GET_F_CREATE);

	counter_add(SLOT_SEEN + kind, 1);
	if (!s)
		return;
	s->start_ns = bpf_ktime_get_ns();
	s->gfp_flags = gfp;
	s->order = order;
	s->kind = kind;
}

static __always_inline void reclaim_end(__u32 kind, unsigned long nr_reclaimed)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct reclaim_start *s = bpf_task_storage_get(&in_reclaim, bpf_get_current_task_btf(), 0, 0);
	struct reclaim_event *e;
	__u64 duration;

	if (!s || !s->start_ns || s->kind != kind)
		return; /* attached in the middle of this reclaim */
	duration = bpf_ktime_get_ns() - s->start_ns;
	s->start_ns = 0;
	if (duration < threshold_ns)
		return;
	counter_add(SLOT_SLOW + kind, 1);
	if (!rate_limit_pass(max_events_per_second)) {
		counter_add(SLOT_SUPPRESSED, 1);
		return;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		counter_add(SLOT_RINGBUF_FULL, 1);
		return;
	}
	e->time_ns = bpf_ktime_get_boot_ns();
	e->duration_ns = duration;
	e->nr_reclaimed = nr_reclaimed;
	e->gfp_flags = s->gfp_flags;
	e->order = s->order;
	e->kind = kind;
	e->pid = pid_tgid >> 32;
	e->tid = tid;
	e->cpu = bpf_get_smp_processor_id();
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	{
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		struct cgroup_subsys_state *css = task_memcg_css(task);

		e->memcg_id = css_cgroup_id(css);
		read_cgroup_path(css, &e->memcg_path);
	}
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&events));
}

SEC("tp_btf/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(bq_direct_begin, int order, gfp_t gfp)
{
	reclaim_begin(KIND_DIRECT, order, gfp);
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_end")
int BPF_PROG(bq_direct_end, unsigned long nr_reclaimed)
{
	reclaim_end(KIND_DIRECT, nr_reclaimed);
	return 0;
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(bq_memcg_begin, int order, gfp_t gfp)
{
	reclaim_begin(KIND_MEMCG, order, gfp);
	return 0;
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(bq_memcg_end, unsigned long nr_reclaimed)
{
	reclaim_end(KIND_MEMCG, nr_reclaimed);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
