/* SPDX-License-Identifier: GPL-2.0 */
/* Latency histograms kept in the kernel, read by user space at scrape time (never per event).
 * Bucket bounds (ns, increasing) come from user space through .rodata. Include after
 * bianque.bpf.h. A series is written by one program only (its adds are not atomic).
 *
 * Fixed series (host level): `hist_add(series, ns)` bumps the mmapped per-CPU `counters` array:
 * series s owns slots [s * (n + 2), (s + 1) * (n + 2)): n buckets, one overflow bucket, the sum.
 * Keyed series (cgroup, disk): `hist_key_add(map, key, ns)` on a per-CPU hash of
 * `struct hist` (bucket i at b[i], overflow at b[n], the sum at b[HIST_MAX_BUCKETS + 1]). */
#ifndef BIANQUE_HISTOGRAM_BPF_H
#define BIANQUE_HISTOGRAM_BPF_H

#define HIST_MAX_BUCKETS 24

const volatile __u64 hist_bounds_ns[HIST_MAX_BUCKETS] = {};
const volatile __u32 hist_nbounds = 0;

struct hist {
	__u64 b[HIST_MAX_BUCKETS + 2];
};

static __always_inline __u32 hist_bucket(__u64 ns)
{
	__u32 i;

	for (i = 0; i < HIST_MAX_BUCKETS; i++) {
		if (i >= hist_nbounds || ns <= hist_bounds_ns[i])
			break;
	}
	return i;
}

static __always_inline void hist_add(__u32 series, __u64 ns)
{
	__u32 n = hist_nbounds;
	__u32 base;

	if (n > HIST_MAX_BUCKETS)
		return;
	base = series * (n + 2);
	counter_add_owned(base + hist_bucket(ns), 1);
	counter_add_owned(base + n + 1, ns);
}

static __always_inline void hist_key_add(void *map, __u64 *key, __u64 ns)
{
	static const struct hist zero = {};
	struct hist *h;
	__u32 i;

	h = bpf_map_lookup_elem(map, key);
	if (!h) {
		bpf_map_update_elem(map, key, &zero, BPF_NOEXIST);
		h = bpf_map_lookup_elem(map, key);
		if (!h)
			return;
	}
	i = hist_bucket(ns);
	if (i > HIST_MAX_BUCKETS)
		return;
	h->b[i] += 1;
	h->b[HIST_MAX_BUCKETS + 1] += ns;
}

/* Kernfs id of the cgroup of `task` in the hierarchy of subsystem `ssid` (a BTF enum value of
 * `enum cgroup_subsys_id`, resolved at load time); 0 if unknown. */
static __always_inline __u64 task_css_cgroup_id(struct task_struct *task, int ssid)
{
	struct cgroup_subsys_state *css;
	struct css_set *cset;

	if (ssid < 0 || ssid >= bpf_core_enum_value(enum cgroup_subsys_id, CGROUP_SUBSYS_COUNT))
		return 0;
	cset = BPF_CORE_READ(task, cgroups);
	if (!cset)
		return 0;
	if (bpf_core_read(&css, sizeof(css), &cset->subsys[ssid]) || !css)
		return 0;
	return BPF_CORE_READ(css, cgroup, kn, id);
}

#endif /* BIANQUE_HISTOGRAM_BPF_H */
