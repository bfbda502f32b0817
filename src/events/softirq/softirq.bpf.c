// SPDX-License-Identifier: GPL-2.0
/* softirq: a CPU stuck in one softirq handler run, or with its tick held off, for longer than a
 * threshold; optionally the delay from a softirq being raised to its handler starting.
 *
 * Everything always on runs in the scheduler tick (tp_btf hrtimer_expire_entry/exit on the tick
 * handler, whose address comes from kallsyms), 250-1000 times a second per busy CPU and never
 * per softirq: a hook on softirq_entry/exit costs ~100 ns per softirq, which is 5-7 % of a
 * loopback packet's cost.
 * - Long runs: the tick reads the interrupted context's preempt count (serving a softirq?) and
 *   the CPU's per-softirq run counts (kstat.softirqs). Counts unchanged since the previous tick,
 *   which was also inside a softirq, mean one handler run spans both ticks. Once the ticks that
 *   saw one run span the threshold it is reported, while it still runs, with the stack under the
 *   tick: the handler's own frames, so the record shows what it was busy with (and a run that
 *   never ends is caught too). Durations are at least what the ticks saw: a run longer than the
 *   threshold plus one tick is always caught.
 * - Delayed softirqs: a vector pending (raised) at two ticks in a row whose run count did not
 *   move in between waited that whole tick without running; counted per vector.
 *   Those two are per-CPU kernel variables, which kallsyms does not list without
 *   CONFIG_KALLSYMS_ALL: they are reached from the tick's own per-CPU state (its timer is the
 *   argument) plus their offsets in the per-CPU section, which user space reads from BTF. The
 *   preempt count read at a tick must show a hard interrupt; if it does not, the offsets are
 *   wrong and the tick counts a mismatch instead of trusting them.
 * - Tick gaps: a tick that came late after the previous one on its CPU means interrupts were off
 *   (or the tick was held off) that long, unless the CPU went idle in between (the tick's per-CPU
 *   state says when it last did) because an idle CPU stops its tick on purpose. In a VM the
 *   hypervisor may not run the vCPU for a while (steal time): the tick handler accounts that
 *   steal in rq->prev_steal_time, so the decision waits for hrtimer_expire_exit and subtracts it.
 * - Latency histograms (opt-in, tp_btf softirq_raise and softirq_entry): per vector, the time
 *   from the first raise while not pending to the handler starting. Two clock reads and two
 *   hooks per softirq. */
#include "bianque.bpf.h"
#include "histogram.bpf.h"
#include "softirq.h"

const volatile __u64 threshold_ns = 10ULL * 1000 * 1000;
const volatile __u32 max_events_per_second = 100;
/* Address of the tick's hrtimer function (tick_nohz_handler, tick_sched_timer before 6.9);
 * 0 leaves the tick unwatched. */
const volatile __u64 tick_fn = 0;
const volatile __u64 tick_gap_threshold_ns = 10ULL * 1000 * 1000;
/* Offsets in the per-CPU section of tick_cpu_sched, __preempt_count, kstat and
 * __softirq_pending (from BTF); watch_runs = 0 leaves long runs and delays unwatched. */
const volatile __u32 watch_runs = 0;
const volatile __u64 pcpu_tick_sched = 0;
const volatile __u64 pcpu_preempt_count = 0;
const volatile __u64 pcpu_kstat = 0;
const volatile __u64 pcpu_softirq_pending = 0;

#define SOFTIRQ_OFFSET 0x100
#define HARDIRQ_MASK 0xf0000

/* Globals of the record and enum types, so that the skeleton generates them for user space. */
struct softirq_event _event_type = {};
enum softirq_vec _softirq_vec_type = 0;
enum counter_slot _counter_slot_type = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct cpu_state {
	__u64 raised_ns[VEC_SLOTS]; /* first raise time of each pending vector, 0 if none */
	__u64 last_tick_ns;         /* the previous tick on this CPU, 0 before the first */
	__u64 gap_ns;               /* the gap before the tick being handled, if over the threshold */
	__u64 last_steal_ns;        /* rq->prev_steal_time after the previous tick */
	__u64 run_seen_ns;          /* the first tick inside the current softirq run, 0 if none */
	__u32 run_counts[VEC_SLOTS]; /* kstat.softirqs at the previous tick */
	__u32 run_vec;              /* the run's vector if the counts tell, else UNKNOWN_VEC */
	__u16 run_reported;
	__u16 pending;              /* softirqs pending at the previous tick */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_state);
} state SEC(".maps");

/* The event counters follow the latency histograms (VEC_SLOTS series of hist_nbounds + 2). */
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
	raised = s->raised_ns[vec];
	if (!raised)
		return 0;
	s->raised_ns[vec] = 0;
	now = bpf_ktime_get_ns();
	if (now > raised)
		hist_add(vec, now - raised);
	return 0;
}

/* Rate-limits and sends one record: a softirq run or a tick gap (TICK_GAP_VEC). Long runs are
 * counted by type in user space from the records; the rest land in the counters here. */
static __always_inline void report(void *ctx, __u32 vec, __u64 duration, __u64 stolen)
{
	struct softirq_event *e;
	__u64 pid_tgid;

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

/* This CPU's address of the per-CPU variable at `offset`, from the tick's per-CPU state. */
static __always_inline void *percpu_var(struct tick_sched *ts, __u64 offset)
{
	return (void *)((__u64)ts - pcpu_tick_sched + offset);
}

/* 1 if x is not 0, else 0: (x | -x) >> 63 kept as arithmetic. Written in C, clang makes it a
 * compare and a branch, and a branch per vector doubles the paths the verifier walks each time
 * (2^16 is past its limit). */
static __always_inline __u64 nonzero(__u64 x)
{
	__u64 t = x;

	asm volatile("%[t] = -%[t]\n\t"
		     "%[t] |= %[x]\n\t"
		     "%[t] >>= 63"
		     : [t] "+r"(t)
		     : [x] "r"(x));
	return t;
}

/* Called at each tick: follows the softirq run the tick interrupted, if any, and reports it
 * once the ticks inside it span the threshold. */
static __always_inline void watch_run(void *ctx, struct cpu_state *s, struct tick_sched *ts,
				      __u64 now)
{
	__u32 counts[VEC_SLOTS] = {};
	__u32 size = bpf_core_field_size(struct kernel_stat, softirqs);
	__u32 pc = 0, i, moved_mask = 0, moved_index = 0;
	__u16 pending = 0, waited;

	if (bpf_probe_read_kernel(&pc, sizeof(pc), percpu_var(ts, pcpu_preempt_count)) ||
	    !(pc & HARDIRQ_MASK)) {
		counter_add(event_slot(SLOT_PERCPU_MISMATCH), 1);
		return;
	}
	if (size > sizeof(counts))
		size = sizeof(counts);
	if (bpf_probe_read_kernel(counts, size,
				  percpu_var(ts, pcpu_kstat +
						 bpf_core_field_offset(struct kernel_stat, softirqs))))
		return;
	bpf_probe_read_kernel(&pending, sizeof(pending), percpu_var(ts, pcpu_softirq_pending));
	/* Which run counts moved since the previous tick, without a branch per vector. */
	for (i = 0; i < VEC_SLOTS; i++) {
		__u32 moved = nonzero(counts[i] ^ s->run_counts[i]);

		moved_mask |= moved << i;
		moved_index += moved * i; /* the index, when only one moved */
		s->run_counts[i] = counts[i];
	}
	/* Pending then and now, and not run in between. */
	waited = pending & s->pending & ~moved_mask;
	s->pending = pending;
	if (waited) {
		/* Adds of 0 or 1 rather than a branch per vector (see nonzero()). */
		for (i = 0; i < VEC_SLOTS; i++)
			counter_add_owned(event_slot(SLOT_DELAYED + i), (waited >> i) & 1);
	}
	if (!(pc & SOFTIRQ_OFFSET)) {
		s->run_seen_ns = 0;
		return;
	}
	if (!s->run_seen_ns || moved_mask) {
		/* A handler started since the previous tick: a new run. If only one vector ran
		 * meanwhile it is this one; otherwise user space reads it from the stack. */
		s->run_seen_ns = now;
		s->run_vec = moved_mask && !(moved_mask & (moved_mask - 1)) ? moved_index : UNKNOWN_VEC;
		s->run_reported = 0;
		return;
	}
	if (s->run_reported || now - s->run_seen_ns < threshold_ns)
		return;
	s->run_reported = 1;
	report(ctx, s->run_vec, now - s->run_seen_ns, 0);
}

/* When the CPU last entered idle (refreshed after each interrupt taken in idle too). */
static __always_inline __u64 idle_entered_ns(struct tick_sched *ts)
{
	if (!bpf_core_field_exists(ts->idle_entrytime))
		return ~0ULL; /* unknown: count every gap as idle, never report one */
	return (__u64)BPF_CORE_READ(ts, idle_entrytime);
}

SEC("tp_btf/hrtimer_expire_entry")
int BPF_PROG(bq_hrtimer_expire_entry, struct hrtimer *timer)
{
	__u32 zero = 0;
	struct cpu_state *s;
	struct tick_sched *ts;
	__u64 now, last;

	if (!tick_fn || (__u64)timer->function != tick_fn)
		return 0;
	s = bpf_map_lookup_elem(&state, &zero);
	if (!s)
		return 0;
	/* The tick's timer is the sched_timer of this CPU's tick_cpu_sched. */
	ts = (struct tick_sched *)((__u64)timer -
				   bpf_core_field_offset(struct tick_sched, sched_timer));
	now = bpf_ktime_get_ns();
	if (watch_runs)
		watch_run(ctx, s, ts, now);
	if (!tick_gap_threshold_ns)
		return 0;
	last = s->last_tick_ns;
	s->last_tick_ns = now;
	s->gap_ns = 0;
	if (!last || now - last < tick_gap_threshold_ns)
		return 0;
	/* Idle since the previous tick: the tick was stopped on purpose. */
	if (idle_entered_ns(ts) >= last)
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

	if (!tick_fn || !tick_gap_threshold_ns || (__u64)timer->function != tick_fn)
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
	if (gap - (stolen < gap ? stolen : gap) < tick_gap_threshold_ns) {
		counter_add(event_slot(SLOT_TICK_GAPS_STOLEN), 1);
		return 0;
	}
	counter_add(event_slot(SLOT_TICK_GAPS), 1);
	report(ctx, TICK_GAP_VEC, gap, stolen);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
