// SPDX-License-Identifier: GPL-2.0
/* netrecvlat: received packets that took too long from their receive timestamp (skb->tstamp,
 * stamped by the stack when the agent keeps RX timestamps on) to a later stage: entering the
 * stack (netif_receive_skb), TCP processing (tcp_probe), or the copy to the reading process
 * (skb_copy_datagram_iovec). The hot path is a timestamp read and a compare per packet; only
 * packets over their stage's threshold are parsed, rate-limited and sent up.
 *
 * The compare needs "now", and a clock read is ~40 ns of a ~100 ns program here (three run per
 * packet). Most packets are far under their threshold, which an upper bound on now settles
 * without the clock: jiffies were j0 at this CPU's last clock read t0, so while jiffies are
 * updated on time, now < t0 + (jiffies - j0 + 1) ticks. A packet under its threshold even at
 * that bound (plus a slack for a late jiffies update) skips the clock; the rest read it and
 * refresh t0. Jiffies can stall (the CPU that updates them held off, or its vCPU not run, for up
 * to ~5 ticks before another takes over): every MAX_SKIPPED-th packet on a CPU reads the clock
 * anyway, and a clock past the bound stops the skipping until jiffies move again. */
#include "bianque.bpf.h"
#include "netrecvlat.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

const volatile __u64 threshold_ns[STAGES] = { 5000000, 10000000, 115000000 };
const volatile __u32 max_events_per_second = 100;
/* Packets in this network namespace are not recorded (0: none excluded). */
const volatile __u32 exclude_netns_inum = 0;

/* CLOCK_REALTIME - CLOCK_MONOTONIC, refreshed by user space (skb->tstamp is usually realtime). */
volatile __s64 realtime_offset_ns = 0;

/* Globals of the record and enum types, so that the skeleton generates them for user space. */
struct netrecv_event _event_type = {};
enum recv_stage _recv_stage_type = 0;
enum counter_slot _counter_slot_type = 0;
enum tstamp_clock _tstamp_clock_type = 0;

/* How late a jiffies update may come and the bound still hold (ns). */
#define BOUND_SLACK_NS 500000ULL
/* Packets a CPU may skip the clock for between two clock reads. */
#define MAX_SKIPPED 64

struct clock_cache {
	__u64 limit;    /* now is before this while jiffies read `jiffies`; 0: not trusted */
	__u64 jiffies;  /* jiffies at this CPU's last clock read */
	__u64 tick_ns;  /* one jiffy (the division done once per refresh, not per packet) */
	__u64 skipped;  /* packets since that skipped the clock */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clock_cache);
} clock_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* sk_buff::mono_delivery_time (5.18-6.10) became the 2-bit tstamp_type in 6.11. */
struct sk_buff___old {
	__u8 mono_delivery_time: 1;
} __attribute__((preserve_access_index));

/* Direct loads: in tp_btf programs skb is a BTF pointer, so fields are read without a helper
 * call (the hot path runs for every received packet). */
static __always_inline __u8 skb_clock(const struct sk_buff *skb)
{
	if (bpf_core_field_exists(skb->tstamp_type)) {
		__u8 t = BPF_CORE_READ_BITFIELD(skb, tstamp_type);

		if (bpf_core_enum_value_exists(enum skb_tstamp_type, SKB_CLOCK_MONOTONIC) &&
		    t == bpf_core_enum_value(enum skb_tstamp_type, SKB_CLOCK_MONOTONIC))
			return TSTAMP_MONOTONIC;
		if (bpf_core_enum_value_exists(enum skb_tstamp_type, SKB_CLOCK_TAI) &&
		    t == bpf_core_enum_value(enum skb_tstamp_type, SKB_CLOCK_TAI))
			return TSTAMP_TAI;
		return TSTAMP_REALTIME;
	}
	/* The bit is 1 for TSTAMP_MONOTONIC, 0 for TSTAMP_REALTIME. */
	if (bpf_core_field_exists(((struct sk_buff___old *)skb)->mono_delivery_time))
		return BPF_CORE_READ_BITFIELD((struct sk_buff___old *)skb, mono_delivery_time);
	return TSTAMP_REALTIME;
}

/* A time no earlier than now (CLOCK_MONOTONIC ns) without reading the clock, from jiffies and
 * this CPU's last clock read; 0 if there is none to trust. */
static __always_inline __u64 now_at_most(const struct clock_cache *c, __u64 jiffies)
{
	if (!c->limit || jiffies < c->jiffies)
		return 0;
	return c->limit + (jiffies - c->jiffies) * c->tick_ns;
}

/* Nanoseconds since the skb's timestamp if they may reach `threshold`; 0 without a timestamp,
 * and 0 or the true latency if it is surely under. */
static __always_inline __u64 skb_latency(const struct sk_buff *skb, __u64 threshold, __u8 *clock)
{
	__u64 ts = skb->tstamp;
	__u32 zero = 0;
	struct clock_cache *c;
	__u64 now, jiffies, bound = 0;
	__s64 offset;

	if (!ts)
		return 0;
	*clock = skb_clock(skb);
	if (*clock == TSTAMP_TAI) {
		now = bpf_ktime_get_tai_ns();
		return now > ts ? now - ts : 0;
	}
	/* skb->tstamp is realtime unless marked monotonic. */
	offset = *clock == TSTAMP_MONOTONIC ? 0 : realtime_offset_ns;
	jiffies = bpf_jiffies64();
	c = bpf_map_lookup_elem(&clock_cache, &zero);
	if (c) {
		bound = now_at_most(c, jiffies);
		/* Past MAX_SKIPPED the clock is read anyway, and checked against the bound. */
		if (bound && c->skipped < MAX_SKIPPED && bound + offset < ts + threshold) {
			c->skipped++;
			return 0;
		}
	}
	now = bpf_ktime_get_ns();
	if (c) {
		c->skipped = 0;
		if (bound && now > bound) {
			/* Jiffies lag the clock: trust them again once they move. */
			c->limit = 0;
			c->jiffies = jiffies;
		} else if (c->limit || jiffies != c->jiffies) {
			c->tick_ns = CONFIG_HZ ? 1000000000ULL / CONFIG_HZ : 0;
			c->limit = c->tick_ns ? now + c->tick_ns + BOUND_SLACK_NS : 0;
			c->jiffies = jiffies;
		}
	}
	now += offset;
	return now > ts ? now - ts : 0;
}

/* Addresses and ports from the headers at `l3` (the IP header). False if not IPv4/IPv6. */
static __always_inline bool parse_headers(const struct sk_buff *skb, unsigned char *l3,
					  struct netrecv_event *e)
{
	__u16 proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	unsigned char *l4;

	if (proto == ETH_P_IP) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), l3) || ip.version != 4)
			return false;
		e->l4_proto = ip.protocol;
		__builtin_memcpy(e->saddr, &ip.saddr, 4);
		__builtin_memcpy(e->daddr, &ip.daddr, 4);
		l4 = l3 + ip.ihl * 4;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), l3) || ip6.version != 6)
			return false;
		e->l4_proto = ip6.nexthdr;
		__builtin_memcpy(e->saddr, &ip6.saddr, 16);
		__builtin_memcpy(e->daddr, &ip6.daddr, 16);
		l4 = l3 + sizeof(ip6);
	} else {
		return false;
	}
	e->l3_proto = proto;
	if (e->l4_proto == IPPROTO_TCP) {
		struct tcphdr tcp;

		if (!bpf_probe_read_kernel(&tcp, sizeof(tcp), l4)) {
			e->sport = bpf_ntohs(tcp.source);
			e->dport = bpf_ntohs(tcp.dest);
			e->tcp_seq = bpf_ntohl(tcp.seq);
		}
	} else if (e->l4_proto == IPPROTO_UDP) {
		struct udphdr udp;

		if (!bpf_probe_read_kernel(&udp, sizeof(udp), l4)) {
			e->sport = bpf_ntohs(udp.source);
			e->dport = bpf_ntohs(udp.dest);
		}
	}
	return true;
}

static __always_inline void handle(const struct sk_buff *skb, __u32 stage, bool at_data)
{
	struct net_device *dev;
	unsigned char *l3;
	__u64 latency;
	__u8 clock = TSTAMP_REALTIME;

	if (stage >= STAGES)
		return;
	latency = skb_latency(skb, threshold_ns[stage], &clock);
	if (latency < threshold_ns[stage])
		return;
	/* Past the threshold: the rare path starts here. */
	struct netrecv_event e = {};

	e.clock = clock;
	/* Only IP packets: unix-socket skbs reach skb_copy_datagram_iovec too. */
	if (at_data)
		l3 = BPF_CORE_READ(skb, data);
	else
		l3 = BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, network_header);
	if (!parse_headers(skb, l3, &e))
		return;
	if (stage == STAGE_USERCOPY) {
		/* skb->dev is reused as scratch space once queued on a socket: use the reader's
		 * namespace and the input interface index. */
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();

		e.netns_inum = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
		e.ifindex = BPF_CORE_READ(skb, skb_iif);
		e.pid = bpf_get_current_pid_tgid() >> 32;
		e.tid = (__u32)bpf_get_current_pid_tgid();
		bpf_get_current_comm(e.comm, sizeof(e.comm));
	} else {
		dev = BPF_CORE_READ(skb, dev);
		if (dev) {
			e.ifindex = BPF_CORE_READ(dev, ifindex);
			bpf_probe_read_kernel_str(e.ifname, sizeof(e.ifname), dev->name);
			e.netns_inum = BPF_CORE_READ(dev, nd_net.net, ns.inum);
		}
	}
	counter_add(SLOT_SLOW + stage, 1);
	if (exclude_netns_inum && e.netns_inum == exclude_netns_inum) {
		counter_add(SLOT_EXCLUDED, 1);
		return;
	}
	if (!rate_limit_pass(max_events_per_second)) {
		counter_add(SLOT_SUPPRESSED, 1);
		return;
	}
	e.time_ns = bpf_ktime_get_boot_ns();
	e.latency_ns = latency;
	e.stage = stage;
	e.len = BPF_CORE_READ(skb, len);
	if (bpf_ringbuf_output(&events, &e, sizeof(e), ringbuf_wakeup_flags(&events)))
		counter_add(SLOT_RINGBUF_FULL, 1);
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(bq_netif_receive_skb, struct sk_buff *skb)
{
	handle(skb, STAGE_NETIF, true);
	return 0;
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(bq_tcp_probe, struct sock *sk, const struct sk_buff *skb)
{
	handle(skb, STAGE_TCP, false);
	return 0;
}

SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(bq_skb_copy_datagram_iovec, const struct sk_buff *skb, int len)
{
	handle(skb, STAGE_USERCOPY, false);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
