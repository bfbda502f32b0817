// SPDX-License-Identifier: GPL-2.0
/* signal: who sent a watched signal (SIGKILL, SIGSEGV…) to whom (tp_btf/signal_generate). */
#include "bianque.bpf.h"
#include "signal.h"

/* Bit n set = watch signal n (1..63). */
const volatile __u64 watched_signals = 0;
const volatile __u32 max_events_per_second = 100;

struct signal_event _event_type = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* Rare events: 64 KiB holds dozens of records; each KiB of ring buffer is kernel memory
	 * mapped twice into the agent (counted in its RSS). */
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

SEC("tp_btf/signal_generate")
int BPF_PROG(bq_signal_generate, int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
	     int result)
{
	struct signal_event e = {};

	if (sig <= 0 || sig >= 64 || !(watched_signals & (1ULL << sig)))
		return 0;
	if (!container_filter_pass(task_memcg_id(task)))
		return 0;
	counter_add(sig, 1);
	if (!rate_limit_pass(max_events_per_second)) {
		counter_add(SLOT_SUPPRESSED, 1);
		return 0;
	}
	e.time_ns = bpf_ktime_get_boot_ns();
	e.sig = sig;
	e.group = group;
	e.result = result;
	/* info may be a special value (SEND_SIG_NOINFO = 0, SEND_SIG_PRIV = 1) rather than a pointer. */
	if ((unsigned long)info > 1)
		e.code = BPF_CORE_READ(info, si_code);
	e.sender_pid = bpf_get_current_pid_tgid() >> 32;
	e.sender_tid = (__u32)bpf_get_current_pid_tgid();
	bpf_get_current_comm(e.sender_comm, sizeof(e.sender_comm));
	e.target_pid = BPF_CORE_READ(task, tgid);
	e.target_tid = BPF_CORE_READ(task, pid);
	bpf_probe_read_kernel_str(e.target_comm, sizeof(e.target_comm), task->comm);
	e.target_memcg_id = task_memcg_id(task);
	if (bpf_ringbuf_output(&events, &e, sizeof(e), ringbuf_wakeup_flags(&events)))
		counter_add(SLOT_RINGBUF_FULL, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
