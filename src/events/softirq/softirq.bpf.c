// SPDX-License-Identifier: GPL-2.0
/* softirq, three measures:
 * - the delay from a softirq being raised to its handler starting, as histograms per vector in
 *   the per-CPU counters (a vector raised again while pending keeps its first raise time);
 * - a CPU that spent longer than a threshold in one handler run, counted by vector and, through
 *   the rate limit, recorded with the interrupted task and the kernel stack
 *   (tp_btf softirq_raise, softirq_entry, softirq_exit);
 * - a CPU whose scheduler tick came late: interrupts were off (or the tick was held off) for
 *   longer than a threshold. tp_btf hrtimer_expire_entry on the tick handler (its address from
 *   kallsyms) compares each tick with the previous one on the CPU, unless the CPU went idle in
 *   between (the tick's own per-CPU state, which holds its timer, says when it last did),
 *   because an idle CPU stops its tick on purpose. (A cpu_idle hook did that before, but it
 *   fires twice per idle period: ~200 ns per loopback round trip.) In a VM the hypervisor may
 *   not run the vCPU for a while (steal time): the tick handler accounts that steal in
 *   rq->prev_steal_time, so the decision waits for hrtimer_expire_exit and subtracts it.
 * Softirqs do not nest on a CPU, so one per-CPU state is enough. The entry program serves both
 * softirq measures with one clock read; the exit program reads only jiffies (a memory load)
 * unless the run may have reached the threshold, so only long runs read the clock there. */
#include "bianque.bpf.h"
#include "histogram.bpf.h"
#include "softirq.h"

const volatile __u64 threshold_ns = 10ULL * 1000 * 1000;
const volatile __u32 max_events_per_second = 100;
/* Address of the tick's hrtimer function (tick_nohz_handler, tick_sched_timer before 6.9);
 * 0 leaves tick gaps unwatched. */
const volatile __u64 tick_fn = 0;
const volatile __u64 tick_gap_threshold_ns = 10ULL * 1000 * 1000;

struct softirq_event _event_type = {};

/* When the CPU last entered idle (refreshed after each interrupt taken in idle too), from the
 * tick's per-CPU state, which holds the tick's timer. Per-CPU data symbols are not in kallsyms
 * without CONFIG_KALLSYMS_ALL, so it is reached from the timer rather than as a ksym. */
static __always_inline __u64 idle_entered_ns(struct hrtimer *timer)
{
	struct tick_sched *ts;

	if (!bpf_core_field_exists(ts->idle_entrytime))
		return ~0ULL; /* unknown: count every gap as idle, never report one */
	ts = (struct tick_sched *)((__u64)timer -
				   bpf_core_field_offset(struct tick_sched, sched_timer));
	return (__u64)BPF_CORE_READ(ts, idle_entrytime);
}

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct cpu_state {
	__u64 raised_ns[VEC_SLOTS]; /* first raise time of each pending vector, 0 if none */
	__u64 start_ns;             /* entry time of the running handler, 0 outside one */
	__u64 start_jiffies;        /* jiffies at that entry */
	__u64 last_tick_ns;         /* the previous tick on this CPU, 0 before the first */
	__u64 gap_ns;               /* the gap before the tick being handled, if over the threshold */
	__u64 last_steal_ns;        /* rq->prev_steal_time after the previous tick */
	__u32 vec;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_state);
} state SEC(".maps");

/* The long-run counters follow the latency histograms (VEC_SLOTS series of hist_nbounds + 2). */
static __always_inline __u32 event_slot(__u32 slot)
{
	return VEC_SLOTS * (hist_nbounds + 2) + slot;
}

SEC("tp_btf/softirq_raise")
int BPF_PROG(bq_softirq_raise, unsigned int vec)
{
	__u32 zero = 0;
	struct cpu_state *s;

	if (vec >= VEC_SLOTS)
		return 0;
	/* The check above may be compiled on a copy of the register: mask the one used as the
	 * index so the verifier sees it bounded (VEC_SLOTS is a power of two). */
	asm volatile("%0 &= 15" : "+r"(vec));
	s = bpf_map_lookup_elem(&state, &zero);
	if (s && !s->raised_ns[vec])
		s->raised_ns[vec] = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(bq_softirq_entry, unsigned int vec)
{
	__u32 zero = 0;
	struct cpu_state *s;
	__u64 now, raised;

	if (vec >= VEC_SLOTS)
		return 0;
	asm volatile("%0 &= 15" : "+r"(vec));
	s = bpf_map_lookup_elem(&state, &zero);
	if (!s)
		return 0;
	now = bpf_ktime_get_ns();
	s->start_ns = now;
	if (CONFIG_HZ)
		s->start_jiffies = bpf_jiffies64();
	s->vec = vec;
	raised = s->raised_ns[vec];
	if (raised) {
		s->raised_ns[vec] = 0;
		if (now > raised)
			hist_add(vec, now - raised);
	}
	return 0;
}

/* Counts, rate-limits and sends one record: a softirq run (vec) or a tick gap (TICK_GAP_VEC). */
static __always_inline void report(void *ctx, __u32 vec, __u64 duration, __u64 stolen,
				   __u32 count_slot)
{
	struct softirq_event *e;
	__u64 pid_tgid;

	counter_add(event_slot(count_slot), 1);
	if (!rate_limit_pass(max_events_per_second)) {
		counter_add(event_slot(SLOT_SUPPRESSED), 1);
		return;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		counter_add(event_slot(SLOT_RINGBUF_FULL), 1);
		return;
	}
	pid_tgid = bpf_get_current_pid_tgid();
	e->time_ns = bpf_ktime_get_boot_ns();
	e->duration_ns = duration;
	e->steal_ns = stolen;
	e->cpu = bpf_get_smp_processor_id();
	e->vec = vec;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->stack_bytes = bpf_get_stack(ctx, e->stack, sizeof(e->stack), 0);
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&events));
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(bq_softirq_exit, unsigned int vec)
{
	__u32 zero = 0;
	struct cpu_state *s = bpf_map_lookup_elem(&state, &zero);
	__u64 duration;

	if (!s || !s->start_ns || s->vec != vec)
		return 0;
	/* A run that saw n jiffy boundaries lasted less than n + 1 jiffies. (Jiffies advance with
	 * some CPU's tick; softirqs run with interrupts on, so ticks keep coming during one.) */
	if (CONFIG_HZ && (bpf_jiffies64() - s->start_jiffies + 1) * 1000000000ULL <
				 threshold_ns * CONFIG_HZ) {
		s->start_ns = 0;
		return 0;
	}
	duration = bpf_ktime_get_ns() - s->start_ns;
	s->start_ns = 0;
	if (duration >= threshold_ns)
		report(ctx, vec, duration, 0, vec < VEC_SLOTS ? vec : VEC_SLOTS - 1);
	return 0;
}

SEC("tp_btf/hrtimer_expire_entry")
int BPF_PROG(bq_hrtimer_expire_entry, struct hrtimer *timer)
{
	__u32 zero = 0;
	struct cpu_state *s;
	__u64 now, last;

	if (!tick_fn || (__u64)timer->function != tick_fn)
		return 0;
	s = bpf_map_lookup_elem(&state, &zero);
	if (!s)
		return 0;
	now = bpf_ktime_get_ns();
	last = s->last_tick_ns;
	s->last_tick_ns = now;
	s->gap_ns = 0;
	if (!last || now - last < tick_gap_threshold_ns)
		return 0;
	/* Idle since the previous tick: the tick was stopped on purpose. */
	if (idle_entered_ns(timer) >= last)
		return 0;
	s->gap_ns = now - last;
	return 0;
}

/* Steal time the tick handler accounted on this CPU so far (ns), through the interrupted task's
 * run queue; 0 where that is not readable (no group scheduling, no paravirt steal clock). */
static __always_inline __u64 cpu_steal_ns(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct cfs_rq *cfs_rq;
	struct rq *rq;

	if (!bpf_core_field_exists(cfs_rq->rq) || !bpf_core_field_exists(rq->prev_steal_time))
		return 0;
	cfs_rq = BPF_CORE_READ(task, se.cfs_rq);
	if (!cfs_rq)
		return 0;
	rq = BPF_CORE_READ(cfs_rq, rq);
	return rq ? BPF_CORE_READ(rq, prev_steal_time) : 0;
}

SEC("tp_btf/hrtimer_expire_exit")
int BPF_PROG(bq_hrtimer_expire_exit, struct hrtimer *timer)
{
	__u32 zero = 0;
	struct cpu_state *s;
	__u64 steal, stolen, gap;

	if (!tick_fn || (__u64)timer->function != tick_fn)
		return 0;
	s = bpf_map_lookup_elem(&state, &zero);
	if (!s)
		return 0;
	steal = cpu_steal_ns();
	stolen = steal > s->last_steal_ns && s->last_steal_ns ? steal - s->last_steal_ns : 0;
	s->last_steal_ns = steal;
	gap = s->gap_ns;
	if (!gap)
		return 0;
	s->gap_ns = 0;
	if (gap - (stolen < gap ? stolen : gap) >= tick_gap_threshold_ns)
		report(ctx, TICK_GAP_VEC, gap, stolen, SLOT_TICK_GAPS);
	else
		counter_add(event_slot(SLOT_TICK_GAPS_STOLEN), 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
