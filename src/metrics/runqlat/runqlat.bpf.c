// SPDX-License-Identifier: GPL-2.0
/* runqlat: time from a task becoming runnable (wakeup, new task, preemption) to it running,
 * from tp_btf sched_wakeup, sched_wakeup_new and sched_switch. Host histogram in the mmapped
 * per-CPU counters (series 0); per container histograms keyed by the task's cpu cgroup, for the
 * cgroups user space listed in `cg_wanted`. */
#include "bianque.bpf.h"
#include "histogram.bpf.h"

#define TASK_RUNNING_STATE 0 /* TASK_RUNNING is a #define (0), not an enum */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
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

struct task_struct___pre_5_14 {
	long state;
};

static __always_inline long task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ((struct task_struct___pre_5_14 *)t, state);
}

static __always_inline void enqueue(struct task_struct *p)
{
	__u32 pid = BPF_CORE_READ(p, pid);
	__u64 ts;

	if (!pid)
		return;
	ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&start, &pid, &ts, BPF_ANY);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(bq_sched_wakeup, struct task_struct *p)
{
	enqueue(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(bq_sched_wakeup_new, struct task_struct *p)
{
	enqueue(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(bq_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 pid;
	__u64 *tsp, delta, cg;
	int ssid;

	/* A task switched out while still runnable waits on the run queue from now. */
	if (task_state(prev) == TASK_RUNNING_STATE)
		enqueue(prev);

	pid = BPF_CORE_READ(next, pid);
	if (!pid)
		return 0;
	tsp = bpf_map_lookup_elem(&start, &pid);
	if (!tsp)
		return 0;
	delta = bpf_ktime_get_ns() - *tsp;
	bpf_map_delete_elem(&start, &pid);
	if ((__s64)delta < 0)
		return 0;
	hist_add(0, delta);

	if (!bpf_core_enum_value_exists(enum cgroup_subsys_id, cpu_cgrp_id))
		return 0;
	ssid = bpf_core_enum_value(enum cgroup_subsys_id, cpu_cgrp_id);
	cg = task_css_cgroup_id(next, ssid);
	if (cg && bpf_map_lookup_elem(&cg_wanted, &cg))
		hist_key_add(&cg_hist, &cg, delta);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
