// SPDX-License-Identifier: GPL-2.0
/* oom: every task the OOM killer picks (tp_btf/mark_victim). The current task is the one whose
 * allocation failed (the trigger). The victim's memory cgroup, its usage and limit, and the
 * ancestor found at its limit (memcg OOM) are read here, so the record is right even when the
 * cgroup is gone before user space looks. Counted by constraint before the rate limit. */
#include "bianque.bpf.h"
#include "oom.h"

/* Globals of the record and enum types, so that the skeleton generates them for user space. */
struct oom_event _event_type = {};
enum counter_slot _counter_slot_type = 0;
enum oom_scope _oom_scope_type = 0;

/* A memcg is "at its limit" when a charge of this many pages could fail: a 2 MiB THP (512 pages
 * on x86) plus the charge batch. Limits at or above `unlimited_pages` mean "no limit". */
const volatile __u64 at_limit_margin_pages = 512 + 64;
const volatile __u32 max_events_per_second = 100;
const volatile __u64 unlimited_pages = 0x7fffffffffffffffULL / 4096; /* LONG_MAX / page size */

/* 64 KiB holds hundreds of these rate-limited records; a ring buffer is resident memory of the
 * agent (mapped into it), so rare-event tracers keep theirs small. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

static __always_inline bool memcg_at_limit(struct mem_cgroup *memcg, __u64 *usage, __u64 *limit)
{
	*usage = BPF_CORE_READ(memcg, memory.usage.counter);
	*limit = BPF_CORE_READ(memcg, memory.max);
	return *limit < unlimited_pages && *usage + at_limit_margin_pages >= *limit;
}

SEC("tp_btf/mark_victim")
int BPF_PROG(bq_mark_victim, struct task_struct *victim, uid_t uid)
{
	struct task_struct *cur = (struct task_struct *)bpf_get_current_task();
	struct cgroup_subsys_state *css, *vcss, *at = NULL;
	__u32 constraint = OOM_GLOBAL;
	__u64 usage = 0, limit = 0;
	struct oom_event *e;

	/* Walk up from the victim's memcg to the first one at its limit. */
	vcss = task_memcg_css(victim);
	css = vcss;
	for (int i = 0; i < MEMCG_ANCESTORS; i++) {
		if (!css)
			break;
		if (memcg_at_limit((struct mem_cgroup *)css, &usage, &limit)) {
			constraint = OOM_MEMCG;
			at = css;
			break;
		}
		css = BPF_CORE_READ(css, parent);
	}
	counter_add(constraint == OOM_MEMCG ? SLOT_MEMCG : SLOT_GLOBAL, 1);

	/* A group kill (memory.oom.group) marks every task of the cgroup: bound the records. */
	if (!rate_limit_pass(max_events_per_second)) {
		counter_add(SLOT_SUPPRESSED, 1);
		return 0;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		counter_add(SLOT_RINGBUF_FULL, 1);
		return 0;
	}
	/* Reserved memory is not zeroed: every field is written below (names only up to their NUL,
	 * which is all user space reads). */
	e->time_ns = bpf_ktime_get_boot_ns();
	e->cpu = bpf_get_smp_processor_id();
	e->constraint = constraint;

	e->trigger_pid = bpf_get_current_pid_tgid() >> 32;
	e->trigger_tid = (__u32)bpf_get_current_pid_tgid();
	bpf_get_current_comm(e->trigger_comm, sizeof(e->trigger_comm));
	e->trigger_memcg_id = task_memcg_id(cur);

	e->victim_pid = BPF_CORE_READ(victim, tgid);
	e->victim_tid = BPF_CORE_READ(victim, pid);
	e->victim_uid = uid;
	bpf_probe_read_kernel_str(e->victim_comm, sizeof(e->victim_comm), victim->comm);
	e->victim_oom_score_adj = BPF_CORE_READ(victim, signal, oom_score_adj);
	e->victim_total_vm_pages = BPF_CORE_READ(victim, mm, total_vm);
	e->victim_memcg_id = css_cgroup_id(vcss);
	e->victim_memcg_usage_pages = 0;
	e->victim_memcg_limit_pages = 0;
	e->victim_memcg_failcnt = 0;
	if (vcss) {
		struct mem_cgroup *memcg = (struct mem_cgroup *)vcss;

		e->victim_memcg_usage_pages = BPF_CORE_READ(memcg, memory.usage.counter);
		e->victim_memcg_limit_pages = BPF_CORE_READ(memcg, memory.max);
		e->victim_memcg_failcnt = BPF_CORE_READ(memcg, memory.failcnt);
	}
	read_cgroup_path(vcss, &e->victim_memcg_path);
	e->constraint_memcg_id = css_cgroup_id(at);
	e->constraint_usage_pages = usage;
	e->constraint_limit_pages = limit;
	read_cgroup_path(at, &e->constraint_memcg_path);
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&events));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
