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

/* Now, and the length of one window, on the limiter's clock. */
static __always_inline __u64 rate_clock(__u64 *window)
{
	if (CONFIG_HZ) {
		*window = CONFIG_HZ;
		return bpf_jiffies64();
	}
	*window = 1000000000ULL;
	return bpf_ktime_get_ns();
}

/* Whether `w` has no pass left in the current window (read only). */
static __always_inline bool rate_window_full(struct rate_window *w, __u64 now, __u64 window,
					     __u32 limit)
{
	return now - w->start < window && w->passed >= limit;
}

/* Takes one of `limit` passes from `w`, starting a new window when the last one is over. */
static __always_inline bool rate_window_take(struct rate_window *w, __u64 now, __u64 window,
					     __u32 limit)
{
	if (now - w->start < window) {
		if (w->passed >= limit)
			return false;
	} else {
		w->start = now;
		w->passed = 0;
	}
	return __sync_fetch_and_add(&w->passed, 1) < limit;
}

static __always_inline bool rate_limit_pass_at(__u32 limit, __u64 now, __u64 window)
{
	__u32 zero = 0;
	struct rate_window *w;

	if (!limit)
		return true;
	w = bpf_map_lookup_elem(&rate_limiter, &zero);
	if (!w)
		return false;
	return rate_window_take(w, now, window, limit);
}

static __always_inline bool rate_limit_pass(__u32 limit)
{
	__u64 now, window;

	if (!limit)
		return true;
	now = rate_clock(&window);
	return rate_limit_pass_at(limit, now, window);
}

#ifdef BIANQUE_SOURCE_LIMIT
/* Per-source limiter in front of the global one, so that one noisy source cannot use up the
 * global budget and hide everyone else's events. A source is the memory cgroup and uid of the
 * task running when the event fires (the same cgroup the agent attributes containers by; the
 * uid tells users apart on a host without containers). Each source has its own window of
 * `source_limit` passes in a small LRU hash: a source not seen for a while is forgotten, and a
 * forgotten source starts with a full window (the global limit still holds then). A program
 * opts in by defining BIANQUE_SOURCE_LIMIT before including this header (the map is created
 * only then). */
#define RATE_SOURCES 1024

struct rate_source {
	__u64 memcg_id;
	__u32 uid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct rate_source);
	__type(value, struct rate_window);
	__uint(max_entries, RATE_SOURCES);
} rate_sources SEC(".maps");

enum rate_verdict {
	RATE_PASS = 0,
	RATE_SOURCE_LIMITED, /* the source used up its share */
	RATE_GLOBAL_LIMITED, /* the source had room, the global limit had none */
};

/* `limit` per second for all, `source_limit` per second for each source (0: no such limit).
 * The source's window is only read before the global one is asked, so a source refused by the
 * global limit keeps its share; the deny path of a flooding source writes nothing. */
static __always_inline enum rate_verdict rate_limit_source(__u32 limit, __u32 source_limit,
							   __u64 memcg_id)
{
	struct rate_source key = {
		.memcg_id = memcg_id,
		.uid = (__u32)bpf_get_current_uid_gid(),
	};
	struct rate_window *sw = NULL;
	__u64 now, window;

	if (!limit && !source_limit)
		return RATE_PASS;
	now = rate_clock(&window);
	if (source_limit) {
		sw = bpf_map_lookup_elem(&rate_sources, &key);
		if (sw && rate_window_full(sw, now, window, source_limit))
			return RATE_SOURCE_LIMITED;
	}
	if (!rate_limit_pass_at(limit, now, window))
		return RATE_GLOBAL_LIMITED;
	if (!source_limit)
		return RATE_PASS;
	if (!sw) {
		struct rate_window fresh = { .start = now, .passed = 1 };

		/* Another CPU may have added the source meanwhile; its window stands. */
		bpf_map_update_elem(&rate_sources, &key, &fresh, BPF_NOEXIST);
		return RATE_PASS;
	}
	/* Lost a race for the source's last pass: refused, the global pass it took is spent. */
	return rate_window_take(sw, now, window, source_limit) ? RATE_PASS : RATE_SOURCE_LIMITED;
}
#endif /* BIANQUE_SOURCE_LIMIT */

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
