/* SPDX-License-Identifier: GPL-2.0 */
/* The record dropwatch.bpf.c sends through its ring buffer. The skeleton generates the Rust
 * type from this definition (see the `_event_type` global), so there is one definition only. */
#ifndef DROPWATCH_H
#define DROPWATCH_H

/* Counter slots: [0, REASON_SLOTS) count drops by reason; the rest are listed after. User space
 * reads these names, and those of the enums below, through the skeleton (`types::…`). */
enum counter_slot {
	REASON_SLOTS = 512,
	SLOT_SUPPRESSED = REASON_SLOTS, /* matched the filter, refused by the global rate limit */
	SLOT_RINGBUF_FULL,              /* passed the limit, ring buffer had no room */
	SLOT_FILTERED,                  /* did not match the protocol/port or container filter */
	SLOT_SOURCE_SUPPRESSED,         /* refused by the per-source (memcg, uid) rate limit */
	SLOT_TEARDOWN,                  /* a normal-teardown reason, not recorded unless asked */
	SLOT_AGENT_TRAFFIC,             /* the agent's own traffic (its task, its listen port) */
	COUNTER_SLOTS,
};

/* Filter bits for `filter_protocols`; 0 means any. */
enum proto_bit {
	PROTO_BIT_TCP = 1 << 0,
	PROTO_BIT_UDP = 1 << 1,
	PROTO_BIT_ICMP = 1 << 2,
	PROTO_BIT_OTHER = 1 << 3,
};

enum filter_limit {
	MAX_FILTER_PORTS = 8,
	TEARDOWN_MASK_WORDS = REASON_SLOTS / 64, /* one bit per drop reason */
};

struct drop_event {
	__u64 time_ns;       /* CLOCK_BOOTTIME */
	__u64 location;      /* kernel address that freed the skb */
	__u64 memcg_id;      /* current task's memory cgroup id */
	__u32 reason;
	__u32 pid;           /* tgid of the current task */
	__u32 tid;
	__u32 len;           /* skb->len */
	__u32 netns_inum;
	__u32 ifindex;
	__u32 cpu;
	__u16 l3_proto;      /* host order ETH_P_* */
	__u8 l4_proto;       /* IPPROTO_* */
	__u8 tcp_flags;
	__u16 sport;         /* host order */
	__u16 dport;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 has_l3;
	__u8 has_l4;
	__u8 saddr[16];      /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	char comm[16];
	char ifname[16];
};

#endif /* DROPWATCH_H */
