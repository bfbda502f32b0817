// SPDX-License-Identifier: GPL-2.0
/* runqlat: time from a task becoming runnable (wakeup, new task, preemption) to it running,
 * from tp_btf sched_wakeup, sched_wakeup_new and sched_switch. Host histogram in the mmapped
 * per-CPU counters (series 0); per container histograms keyed by the task's cpu cgroup, for the
 * cgroups user space listed in `cg_wanted`. */
#include "bianque.bpf.h"
#include "histogram.bpf.h"

#define TASK_RUNNING_STATE 0 /* TASK_RUNNING is a #define (0), not an enum */

/* When each task became runnable (0: not waiting), in the task's own storage: a lookup is a
 * pointer chase from the task, with no hashing, locking or deletion on the scheduler path (a
 * global hash updated and deleted per switch cost ~680 ns a switch here). The kernel frees a
 * task's slot with the task. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} cg_wanted SEC(".maps");

/* Entries come with containers, not per event: allocated when made, not all 4096 up front
 * (~2 MiB of kernel memory on 2 CPUs). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct hist);
} cg_hist SEC(".maps");

struct task_struct___pre_5_14 {
	long state;
};

static __always_inline long task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ((struct task_struct___pre_5_14 *)t, state);
}

/* task_css_cgroup_id() through direct BTF loads (a tp_btf argument is a typed kernel pointer)
 * instead of four bpf_probe_read_kernel() calls: this runs on every context switch. */
static __always_inline __u64 task_cgroup_id_btf(struct task_struct *t, int ssid)
{
	struct cgroup_subsys_state *css;
	struct css_set *cset;
	struct cgroup *cgrp;
	struct kernfs_node *kn;

	if (ssid < 0 || ssid >= bpf_core_enum_value(enum cgroup_subsys_id, CGROUP_SUBSYS_COUNT))
		return 0;
	cset = t->cgroups;
	if (!cset)
		return 0;
	css = cset->subsys[ssid];
	if (!css)
		return 0;
	cgrp = css->cgroup;
	if (!cgrp)
		return 0;
	kn = cgrp->kn;
	return kn ? kn->id : 0;
}

/* The idle task (pid 0) never waits on a run queue. */
static __always_inline void enqueue(struct task_struct *p, __u64 now)
{
	__u64 *ts;

	if (!p || !p->pid)
		return;
	ts = bpf_task_storage_get(&start, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (ts)
		*ts = now;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(bq_sched_wakeup, struct task_struct *p)
{
	enqueue(p, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(bq_sched_wakeup_new, struct task_struct *p)
{
	enqueue(p, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(bq_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u64 *tsp, now, delta, cg;
	int ssid;

	/* One clock read serves both the task switched out and the one switched in. */
	now = bpf_ktime_get_ns();
	/* A task switched out while still runnable waits on the run queue from now. */
	if (prev && task_state(prev) == TASK_RUNNING_STATE)
		enqueue(prev, now);

	if (!next || !next->pid)
		return 0;
	/* No slot is made for a task that never became runnable while we watched. */
	tsp = bpf_task_storage_get(&start, next, 0, 0);
	if (!tsp || !*tsp)
		return 0;
	delta = now - *tsp;
	*tsp = 0;
	if ((__s64)delta < 0)
		return 0;
	hist_add(0, delta);

	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, cpu_cgrp_id))
		return 0;
	ssid = bpf_core_enum_value(enum cgroup_subsys_id, cpu_cgrp_id);
	cg = task_cgroup_id_btf(next, ssid);
	if (cg && bpf_map_lookup_elem(&cg_wanted, &cg))
		hist_key_add(&cg_hist, &cg, delta);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
