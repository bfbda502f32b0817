// SPDX-License-Identifier: GPL-2.0
/* iolatency: block request latency per disk, queue→complete (from block_rq_insert) and
 * issue→complete (from block_rq_issue), tp_btf block_rq_insert/issue/complete. Requests that
 * go straight to the driver (no scheduler insert) have only issue→complete. Per container the
 * same two latencies keyed by the blkio cgroup of the request (its first bio's blkcg, so
 * writeback is charged as the block layer charges it), for the cgroups in `cg_wanted`. */
#include "bianque.bpf.h"
#include "histogram.bpf.h"

#define KIND_Q2C 0
#define KIND_D2C 1

struct rq_times {
	__u64 insert;
	__u64 issue;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct rq_times);
} reqs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct hist);
} disk_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} cg_wanted SEC(".maps");

/* Key: cgroup id << 1 | kind. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct hist);
} cg_hist SEC(".maps");

/* Kernfs id of the blkio cgroup a request is charged to; 0 without CONFIG_BLK_CGROUP or bio. */
static __always_inline __u64 rq_cgroup_id(struct request *rq)
{
	struct blkcg_gq *blkg;

	if (!bpf_core_field_exists(((struct bio *)0)->bi_blkg))
		return 0;
	blkg = BPF_CORE_READ(rq, bio, bi_blkg);
	if (!blkg)
		return 0;
	return BPF_CORE_READ(blkg, blkcg, css.cgroup, kn, id);
}

SEC("tp_btf/block_rq_insert")
int BPF_PROG(bq_block_rq_insert, struct request *rq)
{
	__u64 key = (__u64)rq;
	struct rq_times t = { .insert = bpf_ktime_get_ns() };

	bpf_map_update_elem(&reqs, &key, &t, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(bq_block_rq_issue, struct request *rq)
{
	__u64 key = (__u64)rq;
	struct rq_times *t = bpf_map_lookup_elem(&reqs, &key);

	if (t) {
		t->issue = bpf_ktime_get_ns();
	} else {
		struct rq_times n = { .issue = bpf_ktime_get_ns() };

		bpf_map_update_elem(&reqs, &key, &n, BPF_ANY);
	}
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(bq_block_rq_complete, struct request *rq)
{
	__u64 key = (__u64)rq, now = bpf_ktime_get_ns(), dev, hk, cg;
	struct rq_times *t = bpf_map_lookup_elem(&reqs, &key);
	struct gendisk *disk;

	if (!t)
		return 0;
	disk = BPF_CORE_READ(rq, q, disk);
	dev = disk ? ((__u64)BPF_CORE_READ(disk, major) << 20) | (__u32)BPF_CORE_READ(disk, first_minor) : 0;
	if (t->issue && now > t->issue) {
		hk = dev << 1 | KIND_D2C;
		hist_key_add(&disk_hist, &hk, now - t->issue);
	}
	if (t->insert && now > t->insert) {
		hk = dev << 1 | KIND_Q2C;
		hist_key_add(&disk_hist, &hk, now - t->insert);
	}
	cg = rq_cgroup_id(rq);
	if (cg && bpf_map_lookup_elem(&cg_wanted, &cg)) {
		if (t->issue && now > t->issue) {
			hk = cg << 1 | KIND_D2C;
			hist_key_add(&cg_hist, &hk, now - t->issue);
		}
		if (t->insert && now > t->insert) {
			hk = cg << 1 | KIND_Q2C;
			hist_key_add(&cg_hist, &hk, now - t->insert);
		}
	}
	bpf_map_delete_elem(&reqs, &key);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
