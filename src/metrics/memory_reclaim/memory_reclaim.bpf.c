// SPDX-License-Identifier: GPL-2.0
/* memory_reclaim: time tasks spend stalled in reclaim: memcg limit reclaim
 * (vmscan/mm_vmscan_memcg_reclaim_begin/end) and global direct reclaim
 * (mm_vmscan_direct_reclaim_begin/end). Host series 0 = memcg, 1 = direct; per container memcg
 * stalls keyed by the task's memory cgroup, for the cgroups listed in `cg_wanted`. */
#include "bianque.bpf.h"
#include "histogram.bpf.h"

#define SERIES_MEMCG 0
#define SERIES_DIRECT 1

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} start SEC(".maps");

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

static __always_inline void begin(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 ts = bpf_ktime_get_ns();

	bpf_map_update_elem(&start, &tid, &ts, BPF_ANY);
}

static __always_inline __u64 end(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *ts = bpf_map_lookup_elem(&start, &tid), d;

	if (!ts)
		return 0;
	d = bpf_ktime_get_ns() - *ts;
	bpf_map_delete_elem(&start, &tid);
	return (__s64)d > 0 ? d : 0;
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

char LICENSE[] SEC("license") = "GPL";
