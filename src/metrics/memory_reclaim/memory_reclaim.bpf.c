// SPDX-License-Identifier: GPL-2.0
/* memory_reclaim: time tasks spend stalled in reclaim: memcg limit reclaim
 * (vmscan/mm_vmscan_memcg_reclaim_begin/end), global direct reclaim
 * (mm_vmscan_direct_reclaim_begin/end) and direct compaction (compaction/mm_compaction_begin/end
 * of a compact_control with direct_compaction set: an allocating task compacting a zone, not
 * kcompactd, proactive or /proc/sys/vm/compact_memory compaction). Host series 0 = memcg,
 * 1 = direct reclaim, 2 = direct compaction; per container memcg stalls keyed by the task's
 * memory cgroup, for the cgroups listed in `cg_wanted`. */
#include "bianque.bpf.h"
#include "histogram.bpf.h"

#define SERIES_MEMCG 0
#define SERIES_DIRECT 1
#define SERIES_COMPACT 2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} start SEC(".maps");

/* Direct compaction runs inside the allocation slow path, apart from reclaim: own start map. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} cstart SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} cg_wanted SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct hist);
} cg_hist SEC(".maps");

static __always_inline void begin_in(void *map)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 ts = bpf_ktime_get_ns();

	bpf_map_update_elem(map, &tid, &ts, BPF_ANY);
}

static __always_inline __u64 end_in(void *map)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *ts = bpf_map_lookup_elem(map, &tid), d;

	if (!ts)
		return 0;
	d = bpf_ktime_get_ns() - *ts;
	bpf_map_delete_elem(map, &tid);
	return (__s64)d > 0 ? d : 0;
}

static __always_inline void begin(void)
{
	begin_in(&start);
}

static __always_inline __u64 end(void)
{
	return end_in(&start);
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(bq_memcg_reclaim_begin)
{
	begin();
	return 0;
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(bq_memcg_reclaim_end)
{
	__u64 d = end(), cg;

	if (!d)
		return 0;
	hist_add(SERIES_MEMCG, d);
	cg = task_memcg_id((struct task_struct *)bpf_get_current_task());
	if (cg && bpf_map_lookup_elem(&cg_wanted, &cg))
		hist_key_add(&cg_hist, &cg, d);
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(bq_direct_reclaim_begin)
{
	begin();
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_end")
int BPF_PROG(bq_direct_reclaim_end)
{
	__u64 d = end();

	if (d)
		hist_add(SERIES_DIRECT, d);
	return 0;
}

static __always_inline bool direct_compaction(struct compact_control *cc)
{
	if (!bpf_core_field_exists(cc->direct_compaction))
		return false;
	return BPF_CORE_READ(cc, direct_compaction);
}

/* Attached only where the kernel has the compaction tracepoints (user space turns autoload off
 * otherwise). */
SEC("tp_btf/mm_compaction_begin")
int BPF_PROG(bq_compaction_begin, struct compact_control *cc)
{
	if (direct_compaction(cc))
		begin_in(&cstart);
	return 0;
}

SEC("tp_btf/mm_compaction_end")
int BPF_PROG(bq_compaction_end, struct compact_control *cc)
{
	__u64 d;

	if (!direct_compaction(cc))
		return 0;
	d = end_in(&cstart);
	if (d)
		hist_add(SERIES_COMPACT, d);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
