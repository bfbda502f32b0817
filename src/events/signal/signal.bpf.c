// SPDX-License-Identifier: GPL-2.0
/* signal: who sent a watched signal (SIGKILL, SIGSEGV…) to whom (tp_btf/signal_generate). */
#include "bianque.bpf.h"
#include "signal.h"

/* Bit n set = watch signal n (1..63). */
const volatile __u64 watched_signals = 0;
const volatile __u32 max_events_per_second = 100;

/* Globals of the record and slot types, so that the skeleton generates them for user space. */
struct signal_event _event_type = {};
enum counter_slot _counter_slot_type = 0;

/* 128 KiB holds ~160 of these records (~0.8 KiB with the cgroup path), more than one second of
 * the default rate limit at once (a container stop kills all its processes together); a ring
 * buffer is resident memory of the agent (mapped into it), so rare-event tracers keep theirs
 * small. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 128 * 1024);
} events SEC(".maps");

SEC("tp_btf/signal_generate")
int BPF_PROG(bq_signal_generate, int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
	     int result)
{
	struct cgroup_subsys_state *css;
	struct signal_event *e;

	if (sig <= 0 || sig >= 64 || !(watched_signals & (1ULL << sig)))
		return 0;
	css = task_memcg_css(task);
	if (!container_filter_pass(css_cgroup_id(css)))
		return 0;
	counter_add(sig, 1);
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
	e->sig = sig;
	e->group = group;
	e->result = result;
	/* info may be a special value (SEND_SIG_NOINFO = 0, SEND_SIG_PRIV = 1) rather than a pointer. */
	e->code = (unsigned long)info > 1 ? BPF_CORE_READ(info, si_code) : 0;
	e->sender_pid = bpf_get_current_pid_tgid() >> 32;
	e->sender_tid = (__u32)bpf_get_current_pid_tgid();
	bpf_get_current_comm(e->sender_comm, sizeof(e->sender_comm));
	e->target_pid = BPF_CORE_READ(task, tgid);
	e->target_tid = BPF_CORE_READ(task, pid);
	bpf_probe_read_kernel_str(e->target_comm, sizeof(e->target_comm), task->comm);
	e->target_memcg_id = css_cgroup_id(css);
	read_cgroup_path(css, &e->target_memcg_path);
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&events));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
