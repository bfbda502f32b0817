/* SPDX-License-Identifier: GPL-2.0 */
/* Helpers shared by every bianque BPF program: per-CPU counters that user space reads through mmap,
 * a global events-per-second limiter, ring-buffer submission with batched wakeups, and the current
 * task's memory cgroup (id, css, path). Include after vmlinux.h and the libbpf headers. */
#ifndef BIANQUE_BPF_H
#define BIANQUE_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

/* Counters: a flat mmapable array of u64, one row of `counter_slots` slots per possible CPU.
 * User space sizes it (nr_cpus * counter_slots) before load and sums the rows at scrape time,
 * so counting costs one array lookup and an uncontended atomic add, and reading costs no syscall. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} counters SEC(".maps");

const volatile __u32 counter_slots = 1;

static __always_inline void counter_add(__u32 slot, __u64 n)
{
	__u32 idx = bpf_get_smp_processor_id() * counter_slots + slot;
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		__sync_fetch_and_add(v, n);
}

/* counter_add without the locked instruction, for a slot that only one program writes: the row
 * is this CPU's, and a program does not nest with itself on a CPU, so no write can interleave. */
static __always_inline void counter_add_owned(__u32 slot, __u64 n)
{
	__u32 idx = bpf_get_smp_processor_id() * counter_slots + slot;
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += n;
}

/* Global fixed-window limiter: at most `limit` passes per second across all CPUs. The deny path
 * only reads, so a drop storm does not bounce the cache line between CPUs. Two CPUs may both reset
 * the window at a second boundary; that lets at most a handful of extra events through.
 * The window runs on jiffies (a memory load) rather than a clock read: this runs on every
 * event of a storm. CONFIG_HZ comes from the kernel config; without one, the clock is used. */
extern unsigned int CONFIG_HZ __kconfig __weak;

struct rate_window {
	__u64 start;  /* jiffies (or ns) at the start of the window */
	__u64 passed;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct rate_window);
	__uint(max_entries, 1);
} rate_limiter SEC(".maps");

static __always_inline bool rate_limit_pass(__u32 limit)
{
	__u32 zero = 0;
	struct rate_window *w;
	__u64 now, window;

	if (!limit)
		return true;
	w = bpf_map_lookup_elem(&rate_limiter, &zero);
	if (!w)
		return false;
	if (CONFIG_HZ) {
		now = bpf_jiffies64();
		window = CONFIG_HZ;
	} else {
		now = bpf_ktime_get_ns();
		window = 1000000000ULL;
	}
	if (now - w->start < window) {
		if (w->passed >= limit)
			return false;
	} else {
		w->start = now;
		w->passed = 0;
	}
	return __sync_fetch_and_add(&w->passed, 1) < limit;
}

/* Ring-buffer wakeups cost ~1.7 us each on this class of VM (reference/kernel-notes.md), so
 * producers wake the reader only for the first record after a quiet gap (the reader then drains
 * the ring every RINGBUF_WAKEUP_GAP_NS for a while, and otherwise sleeps in the kernel: see
 * `bpf::poll_ring_buffer_with_tick`) or when a backlog built up (a quarter of the ring, whatever
 * size user space gave it). Keep the gap equal to `bpf::RING_POLL_INTERVAL`. The stamp is racy
 * across CPUs; a race costs at most an extra wakeup, never a missed one: a CPU that skips its
 * wakeup saw a stamp another CPU wrote just before waking the reader itself. */
#define RINGBUF_WAKEUP_GAP_NS 100000000ULL

static __u64 ringbuf_woken_ns;

static __always_inline long ringbuf_wakeup_flags(void *ringbuf)
{
	__u64 now;

	if (bpf_ringbuf_query(ringbuf, BPF_RB_AVAIL_DATA) >=
	    bpf_ringbuf_query(ringbuf, BPF_RB_RING_SIZE) / 4)
		return BPF_RB_FORCE_WAKEUP;
	now = bpf_ktime_get_ns();
	if (now - ringbuf_woken_ns < RINGBUF_WAKEUP_GAP_NS)
		return BPF_RB_NO_WAKEUP;
	ringbuf_woken_ns = now;
	return BPF_RB_FORCE_WAKEUP;
}

/* Memory cgroup css of a task (a `struct mem_cgroup *` starts with it); NULL without a memory
 * controller. The subsystem index comes from BTF at load time, never a hard-coded number. */
static __always_inline struct cgroup_subsys_state *task_memcg_css(struct task_struct *task)
{
	struct cgroup_subsys_state *css;
	struct css_set *cset;
	int id;

	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return NULL;
	id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (id < 0 || id >= bpf_core_enum_value(enum cgroup_subsys_id, CGROUP_SUBSYS_COUNT))
		return NULL;
	cset = BPF_CORE_READ(task, cgroups);
	if (!cset)
		return NULL;
	if (bpf_core_read(&css, sizeof(css), &cset->subsys[id]) || !css)
		return NULL;
	return css;
}

/* Id of a css's cgroup: the kernfs inode number of its directory (what user space stats). */
static __always_inline __u64 css_cgroup_id(struct cgroup_subsys_state *css)
{
	return css ? BPF_CORE_READ(css, cgroup, kn, id) : 0;
}

/* Memory cgroup id (kernfs inode of the cgroup directory) of a task; 0 without a memory
 * controller. */
static __always_inline __u64 task_memcg_id(struct task_struct *task)
{
	return css_cgroup_id(task_memcg_css(task));
}

/* A cgroup's path as its directory names, leaf first (user space reverses and joins them:
 * crate::bpf::cgroup_path_from_names). Read in the kernel so the path is right even when the
 * cgroup is gone by the time user space sees the event. The root contributes no name. */
#define CGROUP_PATH_DEPTH 8
#define CGROUP_NAME_LEN 80

struct cgroup_name {
	char s[CGROUP_NAME_LEN];
};

struct cgroup_path {
	__u32 depth;     /* names filled */
	__u32 truncated; /* 1 when the path had more than CGROUP_PATH_DEPTH levels */
	struct cgroup_name names[CGROUP_PATH_DEPTH];
};

/* kernfs_node::parent was renamed __parent in 6.15. */
struct kernfs_node___old {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

static __always_inline struct kernfs_node *kernfs_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(struct kernfs_node, __parent))
		return BPF_CORE_READ(kn, __parent);
	return BPF_CORE_READ((struct kernfs_node___old *)kn, parent);
}

static __always_inline void read_cgroup_path(struct cgroup_subsys_state *css, struct cgroup_path *out)
{
	struct kernfs_node *kn, *parent;

	out->depth = 0;
	out->truncated = 0;
	if (!css)
		return;
	kn = BPF_CORE_READ(css, cgroup, kn);
	for (int i = 0; i < CGROUP_PATH_DEPTH; i++) {
		if (!kn)
			return;
		parent = kernfs_parent(kn);
		if (!parent)
			return; /* kn is the hierarchy root */
		bpf_probe_read_kernel_str(out->names[i].s, CGROUP_NAME_LEN, BPF_CORE_READ(kn, name));
		out->depth = i + 1;
		kn = parent;
	}
	if (kn && kernfs_parent(kn))
		out->truncated = 1;
}

/* Container filter: memory cgroup ids the agent listed from `[containers] filter_*` patterns.
 * One map shared by every program (user space creates it and each object reuses its fd). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u8);
	__uint(max_entries, 16384);
} container_filter SEC(".maps");

/* 0: no filter; 1: only cgroups in the map; 2: all but cgroups in the map. */
const volatile __u8 container_filter_mode = 0;

static __always_inline bool container_filter_pass(__u64 memcg_id)
{
	bool listed;

	if (!container_filter_mode)
		return true;
	listed = bpf_map_lookup_elem(&container_filter, &memcg_id) != NULL;
	return container_filter_mode == 1 ? listed : !listed;
}

#endif /* BIANQUE_BPF_H */
