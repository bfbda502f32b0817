// SPDX-License-Identifier: GPL-2.0
/* hungtask: a task in uninterruptible sleep longer than kernel.hung_task_timeout_secs, as the
 * kernel's hung-task detector reports it (tp_btf/sched_process_hang). The hung task's own kernel
 * stack is taken here (it is not running), with its memory cgroup path. */
#include "bianque.bpf.h"
#include "hungtask.h"

extern unsigned int CONFIG_HZ __kconfig __weak;

const volatile __u32 max_events_per_second = 100;

/* Globals of the record and slot types, so that the skeleton generates them for user space. */
struct hung_event _event_type = {};
enum counter_slot _counter_slot_type = 0;

/* 64 KiB holds hundreds of these rate-limited records; a ring buffer is resident memory of the
 * agent (mapped into it), so rare-event tracers keep theirs small. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

SEC("tp_btf/sched_process_hang")
int BPF_PROG(bq_process_hang, struct task_struct *task)
{
	struct hung_event *e;

	counter_add(SLOT_REPORTED, 1);
	if (!rate_limit_pass(max_events_per_second)) {
		counter_add(SLOT_SUPPRESSED, 1);
		return 0;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		counter_add(SLOT_RINGBUF_FULL, 1);
		return 0;
	}
	e->time_ns = bpf_ktime_get_boot_ns();
	e->pid = BPF_CORE_READ(task, tgid);
	e->tid = BPF_CORE_READ(task, pid);
	e->hz = CONFIG_HZ;
	e->jiffies_now = bpf_jiffies64();
	e->last_switch_time = 0;
	if (bpf_core_field_exists(task->last_switch_time))
		e->last_switch_time = BPF_CORE_READ(task, last_switch_time);
	e->state = BPF_CORE_READ(task, __state);
	e->_pad = 0;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), task->comm);
	e->stack_bytes = bpf_get_task_stack(task, e->stack, sizeof(e->stack), 0);
	{
		struct cgroup_subsys_state *css = task_memcg_css(task);

		e->memcg_id = css_cgroup_id(css);
		read_cgroup_path(css, &e->memcg_path);
	}
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&events));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
