/* SPDX-License-Identifier: GPL-2.0 */
#ifndef PROFILER_H
#define PROFILER_H

#define PROFILER_MAX_DEPTH 127

/* Slots of the `stats` array. */
#define STAT_SAMPLES 0     /* samples counted into `counts` */
#define STAT_FILTERED 1    /* samples of tasks outside the cgroup filter */
#define STAT_IDLE 2        /* samples of the idle task (pid 0), not counted */
#define STAT_MAP_FULL 3    /* samples lost: `counts` was full */
#define STAT_KSTACK_ERR 4  /* kernel stack could not be taken */
#define STAT_USTACK_ERR 5  /* user stack could not be taken (kernel threads, collisions) */
#define STAT_SLOTS 6

struct profile_key {
	__u32 pid;       /* tgid */
	__s32 kstack_id; /* < 0: none */
	__s32 ustack_id; /* < 0: none */
	__u32 _pad;
	__u64 memcg_id;  /* memory cgroup (kernfs id) of the task: per-container attribution */
	char comm[16];
};

#endif /* PROFILER_H */
