// SPDX-License-Identifier: GPL-2.0
/* dropwatch: every freed-on-drop skb (tp_btf/kfree_skb). Counts drops by reason for every skb,
 * then filters by protocol/port, rate-limits, and only then pays for the header reads. It is the
 * only program writing its counters, so the adds need no locked instruction (a drop storm makes
 * two per drop). */
#define BIANQUE_SOURCE_LIMIT
#include "bianque.bpf.h"
#include "dropwatch.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_ICMPV6_NR 58

const volatile __u32 max_events_per_second = 100;
const volatile __u32 max_events_per_second_per_source = 25;
const volatile __u32 filter_protocols = 0;
const volatile __u16 filter_ports[MAX_FILTER_PORTS] = {};
const volatile __u32 filter_port_count = 0;
/* Drop reasons of a normal connection teardown (bit per reason), counted but not recorded. */
const volatile __u64 teardown_reasons[TEARDOWN_MASK_WORDS] = {};
/* The agent's own process (its probes, its HTTP sockets' teardown) and its listen port. */
const volatile __u32 agent_tgid = 0;
const volatile __u16 agent_port = 0;

/* Globals of the record and enum types, so that the skeleton generates them for user space. */
struct drop_event _event_type = {};
enum counter_slot _counter_slot_type = 0;
enum proto_bit _proto_bit_type = 0;
enum filter_limit _filter_limit_type = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

static __always_inline void parse_headers(struct sk_buff *skb, struct drop_event *e)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u16 l4_off;

	e->len = BPF_CORE_READ(skb, len);
	e->l3_proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	if (nh == (__u16)~0U || !head)
		return;

	if (e->l3_proto == ETH_P_IP) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) || ip.version != 4)
			return;
		e->has_l3 = 1;
		e->l4_proto = ip.protocol;
		__builtin_memcpy(e->saddr, &ip.saddr, 4);
		__builtin_memcpy(e->daddr, &ip.daddr, 4);
		l4_off = nh + ip.ihl * 4;
	} else if (e->l3_proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh) || ip6.version != 6)
			return;
		e->has_l3 = 1;
		e->l4_proto = ip6.nexthdr;
		__builtin_memcpy(e->saddr, &ip6.saddr, 16);
		__builtin_memcpy(e->daddr, &ip6.daddr, 16);
		l4_off = nh + sizeof(ip6);
	} else {
		return;
	}
	/* The transport header is unset on some paths (e.g. dropped before L4 demux). */
	if (th != (__u16)~0U && th > nh)
		l4_off = th;

	if (e->l4_proto == IPPROTO_TCP) {
		struct tcphdr tcp;

		if (bpf_probe_read_kernel(&tcp, sizeof(tcp), head + l4_off))
			return;
		e->sport = bpf_ntohs(tcp.source);
		e->dport = bpf_ntohs(tcp.dest);
		e->tcp_flags = ((__u8 *)&tcp)[13];
		e->has_l4 = 1;
	} else if (e->l4_proto == IPPROTO_UDP) {
		struct udphdr udp;

		if (bpf_probe_read_kernel(&udp, sizeof(udp), head + l4_off))
			return;
		e->sport = bpf_ntohs(udp.source);
		e->dport = bpf_ntohs(udp.dest);
		e->has_l4 = 1;
	} else if (e->l4_proto == IPPROTO_ICMP || e->l4_proto == IPPROTO_ICMPV6_NR) {
		__u8 tc[2];

		if (bpf_probe_read_kernel(tc, sizeof(tc), head + l4_off))
			return;
		e->icmp_type = tc[0];
		e->icmp_code = tc[1];
		e->has_l4 = 1;
	}
}

static __always_inline bool filter_match(const struct drop_event *e)
{
	__u32 bit;

	if (filter_protocols) {
		switch (e->l4_proto) {
		case IPPROTO_TCP: bit = PROTO_BIT_TCP; break;
		case IPPROTO_UDP: bit = PROTO_BIT_UDP; break;
		case IPPROTO_ICMP:
		case IPPROTO_ICMPV6_NR: bit = PROTO_BIT_ICMP; break;
		default: bit = PROTO_BIT_OTHER; break;
		}
		if (!e->has_l3 || !(filter_protocols & bit))
			return false;
	}
	if (filter_port_count) {
		if (!e->has_l4 || (e->l4_proto != IPPROTO_TCP && e->l4_proto != IPPROTO_UDP))
			return false;
		for (int i = 0; i < MAX_FILTER_PORTS; i++) {
			if (i >= filter_port_count)
				break;
			if (filter_ports[i] == e->sport || filter_ports[i] == e->dport)
				return true;
		}
		return false;
	}
	return true;
}

static __always_inline bool is_teardown(__u32 reason)
{
	__u32 word = reason / 64;

	/* Checked on the index register itself: the compiler would otherwise reuse an earlier
	 * bound on another copy of `reason`, which the verifier does not carry over. */
	barrier_var(word);
	if (word >= TEARDOWN_MASK_WORDS)
		return false;
	return (teardown_reasons[word] >> (reason % 64)) & 1;
}

/* The per-source limit, then the global one; each counts what it refuses. */
static __always_inline bool limit_pass(__u64 memcg_id)
{
	switch (rate_limit_source(max_events_per_second, max_events_per_second_per_source, memcg_id)) {
	case RATE_PASS:
		return true;
	case RATE_SOURCE_LIMITED:
		counter_add_owned(SLOT_SOURCE_SUPPRESSED, 1);
		return false;
	default:
		counter_add_owned(SLOT_SUPPRESSED, 1);
		return false;
	}
}

/* Everything past the storm path's checks: the record (zeroed here, not on every drop). */
static __always_inline void record_drop(struct sk_buff *skb, void *location,
					enum skb_drop_reason reason, bool filtering,
					__u64 memcg_id)
{
	struct drop_event e = {};
	struct net_device *dev;

	parse_headers(skb, &e);
	/* Traffic of the agent's listen port seen from another context (a remote scraper). */
	if (agent_port && e.l4_proto == IPPROTO_TCP && e.has_l4 &&
	    (e.sport == agent_port || e.dport == agent_port)) {
		counter_add_owned(SLOT_AGENT_TRAFFIC, 1);
		return;
	}
	if (filtering) {
		if (!filter_match(&e)) {
			counter_add_owned(SLOT_FILTERED, 1);
			return;
		}
		if (!limit_pass(memcg_id))
			return;
	}

	e.time_ns = bpf_ktime_get_boot_ns();
	e.location = (__u64)location;
	e.reason = reason;
	e.pid = bpf_get_current_pid_tgid() >> 32;
	e.tid = (__u32)bpf_get_current_pid_tgid();
	e.cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(e.comm, sizeof(e.comm));
	e.memcg_id = memcg_id;
	dev = BPF_CORE_READ(skb, dev);
	if (dev) {
		e.ifindex = BPF_CORE_READ(dev, ifindex);
		bpf_probe_read_kernel_str(e.ifname, sizeof(e.ifname), dev->name);
		e.netns_inum = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	} else {
		struct sock *sk = BPF_CORE_READ(skb, sk);

		if (sk)
			e.netns_inum = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	}
	if (bpf_ringbuf_output(&events, &e, sizeof(e), ringbuf_wakeup_flags(&events)))
		counter_add_owned(SLOT_RINGBUF_FULL, 1);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(bq_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	bool filtering = filter_protocols || filter_port_count;
	__u64 memcg_id;

	counter_add_owned(reason < REASON_SLOTS ? reason : REASON_SLOTS - 1, 1);

	/* Both before the limit: neither uses up a pass. */
	if (is_teardown(reason)) {
		counter_add_owned(SLOT_TEARDOWN, 1);
		return 0;
	}
	if (agent_tgid && bpf_get_current_pid_tgid() >> 32 == agent_tgid) {
		counter_add_owned(SLOT_AGENT_TRAFFIC, 1);
		return 0;
	}

	memcg_id = task_memcg_id((struct task_struct *)bpf_get_current_task());
	if (container_filter_mode && !container_filter_pass(memcg_id)) {
		counter_add_owned(SLOT_FILTERED, 1);
		return 0;
	}

	/* Without a filter, refuse before touching the packet: the storm path stays cheap. */
	if (!filtering && !limit_pass(memcg_id))
		return 0;
	record_drop(skb, location, reason, filtering, memcg_id);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
