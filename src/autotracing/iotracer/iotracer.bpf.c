// SPDX-License-Identifier: GPL-2.0
/* iotracer: per-process, per-file IO on one disk for a capture window, aggregated in a hash map
 * (no per-IO message to user space).
 *  - filesystem side: the raw syscall tracepoints, for read/write/pread64/pwrite64/readv/writev/
 *    preadv/pwritev(2); the fd is resolved to its file in the kernel (task->files), only files on
 *    the watched disk count;
 *  - disk side: tp_btf block_bio_queue charges a bio to the task that queued it and to the file of
 *    its first page (page cache), or for direct IO to the file of the task's read/write syscall in
 *    progress; block_rq_issue/complete give each request's queue→complete (q2c) and
 *    issue→complete (d2c) time, charged to the owner of its first bio. */
#include "bianque.bpf.h"
#include "iotracer.h"

/* The watched disk (gendisk major, first minor and minor count); watch_all = 1 watches every disk. */
const volatile __u32 target_major = 0;
const volatile __u32 target_first_minor = 0;
const volatile __u32 target_minors = 1;
const volatile __u32 watch_all = 0;
/* O_DIRECT of this architecture (uapi, from libc). */
const volatile __u32 o_direct = 0;

/* IO waits (io_schedule) at least this long are kept, with the task's kernel stack. */
const volatile __u64 stall_threshold_ns = 100000000;

struct io_key _key_type = {};
struct io_val _val_type = {};
struct io_stall _stall_type = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct io_key);
	__type(value, struct io_val);
	__uint(max_entries, 8192);
} io SEC(".maps");

/* A read/write syscall in progress, by thread id (LRU: a thread that exits inside a syscall
 * leaves its entry behind). */
struct inflight {
	struct io_key key;
	__u64 start_ns;
	__u64 file;
	__u32 op;
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32);
	__type(value, struct inflight);
	__uint(max_entries, 8192);
} inflight SEC(".maps");

/* A queued bio of the watched disk: whom it is charged to, and when it was queued. */
struct bio_info {
	struct io_key key;
	__u64 queue_ns;
	__u32 op;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct bio_info);
	__uint(max_entries, 16384);
} bios SEC(".maps");

/* Issue time of a request whose first bio is in `bios`. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, __u64);
	__uint(max_entries, 16384);
} rqs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, IOT_STAT_SLOTS);
} stats SEC(".maps");

/* When a thread was switched out waiting for IO, and on which CPU. */
struct iowait_start {
	__u64 ns;
	__u32 cpu;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32);
	__type(value, struct iowait_start);
	__uint(max_entries, 16384);
} iowait SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct io_stall);
	__uint(max_entries, 1024);
} stalls SEC(".maps");

#define S_IFMT 0170000
#define S_IFREG 0100000
#define S_IFBLK 0060000

static __always_inline void stat_add(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline bool dev_watched(__u32 dev)
{
	__u32 major = dev >> 20, minor = dev & 0xfffff;

	return watch_all || (major == target_major && minor >= target_first_minor &&
			     minor < target_first_minor + target_minors);
}

static __always_inline bool disk_watched(struct gendisk *disk)
{
	if (watch_all)
		return true;
	if (!disk)
		return false;
	return BPF_CORE_READ(disk, major) == target_major &&
	       BPF_CORE_READ(disk, first_minor) == target_first_minor;
}

/* Fills key->dev/ino/kind for an inode; false when it is neither a regular file on the watched
 * disk nor the watched block device (pipes, sockets, tmpfs, other disks). */
static __always_inline bool inode_key(struct inode *inode, struct io_key *key, bool check_disk)
{
	__u16 mode;

	if (!inode)
		return false;
	mode = BPF_CORE_READ(inode, i_mode) & S_IFMT;
	if (mode == S_IFREG) {
		struct super_block *sb = BPF_CORE_READ(inode, i_sb);
		struct block_device *bdev = BPF_CORE_READ(sb, s_bdev);

		if (!bdev)
			return false;
		if (check_disk && !disk_watched(BPF_CORE_READ(bdev, bd_disk)))
			return false;
		key->dev = BPF_CORE_READ(sb, s_dev);
		key->ino = BPF_CORE_READ(inode, i_ino);
		key->kind = IOT_KIND_FILE;
		return true;
	}
	if (mode == S_IFBLK) {
		__u32 rdev = BPF_CORE_READ(inode, i_rdev);

		if (check_disk && !dev_watched(rdev))
			return false;
		key->dev = rdev;
		key->ino = 0;
		key->kind = IOT_KIND_BLOCKDEV;
		return true;
	}
	return false;
}

/* The (process, file) entry, created with the current task's comm and memory cgroup. */
static __always_inline struct io_val *io_entry(struct io_key *key, struct file *file)
{
	struct io_val *v = bpf_map_lookup_elem(&io, key);
	static const struct io_val zero = {};

	if (v)
		return v;
	if (bpf_map_update_elem(&io, key, &zero, BPF_NOEXIST) && !bpf_map_lookup_elem(&io, key)) {
		stat_add(IOT_STAT_MAP_FULL);
		return NULL;
	}
	v = bpf_map_lookup_elem(&io, key);
	if (!v)
		return NULL;
	bpf_get_current_comm(v->comm, sizeof(v->comm));
	v->memcg_id = task_memcg_id((struct task_struct *)bpf_get_current_task());
	if (file) {
		const unsigned char *name = BPF_CORE_READ(file, f_path.dentry, d_name.name);

		if (name)
			bpf_probe_read_kernel_str(v->name, sizeof(v->name), name);
	}
	return v;
}

/* The page cache mapping of a page: a tail page of a large folio keeps it in its head page
 * (compound_head has bit 0 set and points at the head). */
static __always_inline struct address_space *page_mapping_of(struct page *page)
{
	unsigned long head;

	if (!page)
		return NULL;
	head = BPF_CORE_READ(page, compound_head);
	if (head & 1)
		page = (struct page *)(head - 1);
	return BPF_CORE_READ(page, mapping);
}

static __always_inline void max_set(__u64 *slot, __u64 v)
{
	if (v > *slot)
		*slot = v;
}

static __always_inline int rw_enter(unsigned long fd, __u32 op)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();
	struct inflight in = {};
	struct file **fds, *file = NULL;
	struct fdtable *fdt;
	__u32 tid = id;

	fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (!fds || bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	if (!inode_key(BPF_CORE_READ(file, f_inode), &in.key, true))
		return 0;
	in.key.pid = id >> 32;
	in.start_ns = bpf_ktime_get_ns();
	in.file = (__u64)file;
	in.op = op;
	in.flags = (BPF_CORE_READ(file, f_flags) & o_direct) ? IOT_FLAG_DIRECT : IOT_FLAG_BUFFERED;
	if (bpf_map_update_elem(&inflight, &tid, &in, BPF_ANY))
		stat_add(IOT_STAT_INFLIGHT_FULL);
	return 0;
}

static __always_inline int rw_exit(long ret)
{
	__u32 tid = bpf_get_current_pid_tgid();
	struct inflight *in = bpf_map_lookup_elem(&inflight, &tid);
	struct io_val *v;
	__u64 ns;
	__u32 op;

	if (!in)
		return 0;
	op = in->op & 1;
	ns = bpf_ktime_get_ns() - in->start_ns;
	if (ret > 0) {
		v = io_entry(&in->key, (struct file *)in->file);
		if (v) {
			__sync_fetch_and_add(&v->fs_bytes[op], ret);
			__sync_fetch_and_add(&v->fs_ops[op], 1);
			__sync_fetch_and_add(&v->fs_ns[op], ns);
			max_set(&v->fs_max_ns[op], ns);
			v->flags |= in->flags;
		}
	}
	bpf_map_delete_elem(&inflight, &tid);
	return 0;
}

/* Syscall numbers of this architecture (from libc; -1 when it has no such call). Raw syscall
 * tracepoints (tp_btf): the per-syscall `syscalls/` events go through perf's trace buffer, which
 * skipped a few percent of calls under load on the test machines. */
const volatile long nr_read = -1, nr_write = -1, nr_pread64 = -1, nr_pwrite64 = -1;
const volatile long nr_readv = -1, nr_writev = -1, nr_preadv = -1, nr_pwritev = -1;
const volatile long nr_preadv2 = -1, nr_pwritev2 = -1;

SEC("tp_btf/sys_enter")
int BPF_PROG(bq_io_sys_enter, struct pt_regs *regs, long id)
{
	__u32 op;

	if (id == nr_read || id == nr_pread64 || id == nr_readv || id == nr_preadv ||
	    id == nr_preadv2)
		op = IOT_READ;
	else if (id == nr_write || id == nr_pwrite64 || id == nr_writev || id == nr_pwritev ||
		 id == nr_pwritev2)
		op = IOT_WRITE;
	else
		return 0;
	return rw_enter(PT_REGS_PARM1_CORE(regs), op);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(bq_io_sys_exit, struct pt_regs *regs, long ret)
{
	return rw_exit(ret);
}

SEC("tp_btf/block_bio_queue")
int BPF_PROG(bq_io_bio_queue, struct bio *bio)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct address_space *mapping = NULL;
	struct bio_info bi = {};
	struct inflight *in;
	struct io_val *v;
	__u32 opf, op, size, tid = id;

	if (!disk_watched(BPF_CORE_READ(bio, bi_bdev, bd_disk)))
		return 0;
	/* The operation is the low REQ_OP_BITS (8, a #define absent from BTF) of bi_opf; its
	 * values come from BTF. */
	opf = BPF_CORE_READ(bio, bi_opf) & ((1 << 8) - 1);
	if (opf == bpf_core_enum_value(enum req_op, REQ_OP_READ))
		op = IOT_READ;
	else if (opf == bpf_core_enum_value(enum req_op, REQ_OP_WRITE))
		op = IOT_WRITE;
	else
		return 0;
	size = BPF_CORE_READ(bio, bi_iter.bi_size);
	if (!size)
		return 0;
	in = bpf_map_lookup_elem(&inflight, &tid);
	if (in && (in->flags & IOT_FLAG_DIRECT)) {
		/* Direct IO: the pages are the caller's buffer; the file is the syscall's. */
		bi.key = in->key;
	} else {
		if (BPF_CORE_READ(bio, bi_vcnt))
			mapping = page_mapping_of(BPF_CORE_READ(bio, bi_io_vec, bv_page));
		/* Low bits set: anonymous or movable, not a file's page cache. */
		if (mapping && !((__u64)mapping & 3) &&
		    inode_key(BPF_CORE_READ(mapping, host), &bi.key, false))
			;
		else if (in)
			bi.key = in->key;
		else
			bi.key.kind = IOT_KIND_UNKNOWN;
	}
	bi.key.pid = id >> 32;
	bi.queue_ns = bpf_ktime_get_ns();
	bi.op = op;
	v = io_entry(&bi.key, NULL);
	if (!v)
		return 0;
	__sync_fetch_and_add(&v->disk_bytes[op], size);
	__sync_fetch_and_add(&v->disk_ops[op], 1);
	if (in)
		v->flags |= in->flags;
	bpf_map_update_elem(&bios, &bio, &bi, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(bq_io_rq_issue, struct request *rq)
{
	__u64 bio = (__u64)BPF_CORE_READ(rq, bio);
	__u64 now;

	if (!bio || !bpf_map_lookup_elem(&bios, &bio))
		return 0;
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&rqs, &rq, &now, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(bq_io_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	struct bio *bio = BPF_CORE_READ(rq, bio);
	__u64 b = (__u64)bio, now, *issued, q2c, d2c = 0;
	struct bio_info *bi;
	struct io_val *v;
	__u32 op;

	issued = bpf_map_lookup_elem(&rqs, &rq);
	if (!bio)
		goto out;
	bi = bpf_map_lookup_elem(&bios, &b);
	if (!bi) {
		if (disk_watched(BPF_CORE_READ(bio, bi_bdev, bd_disk)))
			stat_add(IOT_STAT_NO_BIO);
		goto out;
	}
	now = bpf_ktime_get_ns();
	op = bi->op & 1;
	q2c = now - bi->queue_ns;
	if (issued)
		d2c = now - *issued;
	v = bpf_map_lookup_elem(&io, &bi->key);
	if (v) {
		__sync_fetch_and_add(&v->q2c_ns[op], q2c);
		__sync_fetch_and_add(&v->d2c_ns[op], d2c);
		__sync_fetch_and_add(&v->lat_ops[op], 1);
		max_set(&v->q2c_max_ns[op], q2c);
		max_set(&v->d2c_max_ns[op], d2c);
	}
	/* Forget the request's bios (merged ones too), bounded. */
	for (int i = 0; i < 16 && bio; i++) {
		b = (__u64)bio;
		bpf_map_delete_elem(&bios, &b);
		bio = BPF_CORE_READ(bio, bi_next);
	}
out:
	if (issued)
		bpf_map_delete_elem(&rqs, &rq);
	return 0;
}

/* IO waits: a task switched out with in_iowait set (io_schedule) is timed until it is switched
 * back in; a wait over the threshold keeps its kernel stack, taken at switch-in, when the task
 * has not run yet and its stack is still the one it slept on. */
SEC("tp_btf/sched_switch")
int BPF_PROG(bq_io_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	struct iowait_start *w, start = {};
	__u32 tid = BPF_CORE_READ(next, pid);
	struct io_stall *v;
	__u64 now, ns;

	if (prev_state && BPF_CORE_READ_BITFIELD_PROBED(prev, in_iowait)) {
		__u32 ptid = BPF_CORE_READ(prev, pid);

		start.ns = bpf_ktime_get_ns();
		start.cpu = bpf_get_smp_processor_id();
		bpf_map_update_elem(&iowait, &ptid, &start, BPF_ANY);
	}
	w = bpf_map_lookup_elem(&iowait, &tid);
	if (!w)
		return 0;
	now = bpf_ktime_get_ns();
	ns = now - w->ns;
	start.cpu = w->cpu;
	bpf_map_delete_elem(&iowait, &tid);
	if (ns < stall_threshold_ns)
		return 0;
	v = bpf_map_lookup_elem(&stalls, &tid);
	if (!v) {
		static const struct io_stall zero = {};

		if (bpf_map_update_elem(&stalls, &tid, &zero, BPF_NOEXIST) &&
		    !bpf_map_lookup_elem(&stalls, &tid)) {
			stat_add(IOT_STAT_STALLS_FULL);
			return 0;
		}
		v = bpf_map_lookup_elem(&stalls, &tid);
		if (!v)
			return 0;
		v->pid = BPF_CORE_READ(next, tgid);
		v->tid = tid;
		BPF_CORE_READ_STR_INTO(&v->comm, next, comm);
		v->memcg_id = task_memcg_id(next);
	}
	v->count++;
	v->total_ns += ns;
	if (ns > v->max_ns) {
		v->max_ns = ns;
		v->cpu = start.cpu;
		v->stack_bytes = bpf_get_task_stack(next, v->stack, sizeof(v->stack), 0);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
