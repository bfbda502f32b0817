// SPDX-License-Identifier: GPL-2.0
/* container_lifecycle: cgroup directories created and removed (tp_btf/cgroup_mkdir, cgroup_rmdir),
 * so the agent learns of a container the moment its cgroup appears or goes. Rare events: no limiter. */
#include "bianque.bpf.h"
#include "container_lifecycle.h"

/* Only this hierarchy (the memory controller's, or cgroup2's); 0 = every hierarchy. */
const volatile __u32 hierarchy_id = 0;

/* Globals of the record and slot types, so that the skeleton generates them for user space. */
struct cgroup_event _event_type = {};
enum counter_slot _counter_slot_type = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* Ring-buffer records are too large for the BPF stack: build them in a per-CPU scratch slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct cgroup_event);
	__uint(max_entries, 1);
} scratch SEC(".maps");

static __always_inline int report(struct cgroup *cgrp, const char *path, __u8 removed)
{
	__u32 zero = 0, hid = BPF_CORE_READ(cgrp, root, hierarchy_id);
	struct cgroup_event *e;

	if (hierarchy_id && hid != hierarchy_id)
		return 0;
	counter_add(removed ? SLOT_RMDIR : SLOT_MKDIR, 1);
	e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;
	e->time_ns = bpf_ktime_get_boot_ns();
	e->cgroup_id = BPF_CORE_READ(cgrp, kn, id);
	e->hierarchy_id = hid;
	e->level = BPF_CORE_READ(cgrp, level);
	e->removed = removed;
	bpf_probe_read_kernel_str(e->path, sizeof(e->path), path);
	/* Wake the reader at once: containers appear rarely and should be known before their events. */
	if (bpf_ringbuf_output(&events, e, sizeof(*e), BPF_RB_FORCE_WAKEUP))
		counter_add(SLOT_RINGBUF_FULL, 1);
	return 0;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(bq_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	return report(cgrp, path, 0);
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(bq_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	return report(cgrp, path, 1);
}

char LICENSE[] SEC("license") = "GPL";
