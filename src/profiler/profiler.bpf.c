// SPDX-License-Identifier: GPL-2.0
/* profiler: perf_event (software CPU clock) sampling of kernel + user stacks, optionally of one
 * memory cgroup, counted in a hash map in the kernel; user space reads the map after the window. */
#include "bianque.bpf.h"
#include "profiler.h"

/* Memory cgroup id to profile (kernfs inode); 0 profiles every task. */
const volatile __u64 filter_memcg_id = 0;

struct profile_key _key_type = {};

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, PROFILER_MAX_DEPTH * sizeof(__u64));
	__uint(max_entries, 16384);
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct profile_key);
	__type(value, __u64);
	__uint(max_entries, 16384);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_SLOTS);
} stats SEC(".maps");

static __always_inline void stat_add(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("perf_event")
int bq_profile(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct profile_key key = {};
	__u64 one = 1, *v;

	if ((__u32)id == 0) {
		stat_add(STAT_IDLE);
		return 0;
	}
	key.memcg_id = task_memcg_id((struct task_struct *)bpf_get_current_task());
	if (filter_memcg_id && key.memcg_id != filter_memcg_id) {
		stat_add(STAT_FILTERED);
		return 0;
	}
	key.pid = id >> 32;
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	key.kstack_id = bpf_get_stackid(ctx, &stacks, 0);
	if (key.kstack_id < 0)
		stat_add(STAT_KSTACK_ERR);
	key.ustack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (key.ustack_id < 0)
		stat_add(STAT_USTACK_ERR);
	v = bpf_map_lookup_elem(&counts, &key);
	if (v) {
		__sync_fetch_and_add(v, 1);
	} else if (bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST)) {
		/* Another CPU may have inserted the same key meanwhile. */
		v = bpf_map_lookup_elem(&counts, &key);
		if (!v) {
			stat_add(STAT_MAP_FULL);
			return 0;
		}
		__sync_fetch_and_add(v, 1);
	}
	stat_add(STAT_SAMPLES);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
