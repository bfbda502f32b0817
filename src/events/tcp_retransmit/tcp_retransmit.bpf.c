// SPDX-License-Identifier: GPL-2.0
/* tcp_retransmit: every TCP retransmission (tp_btf/tcp_retransmit_skb) and SYN-ACK retransmission
 * (tp_btf/tcp_retransmit_synack). Counted by kind; rate-limited before anything is read from the
 * socket; the record carries the 4-tuple, state, congestion-avoidance state, sequence numbers
 * and network namespace. Phase and reason are derived in user space from names read from BTF. */
#include "bianque.bpf.h"
#include "tcp_retransmit.h"

#define AF_INET 2
#define AF_INET6 10

const volatile __u32 max_events_per_second = 100;

/* Globals of the record and enum types, so that the skeleton generates them for user space. */
struct retrans_event _event_type = {};
enum retrans_kind _retrans_kind_type = 0;
enum counter_slot _counter_slot_type = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline void fill_common(struct retrans_event *e, const struct sock_common *skc)
{
	e->family = BPF_CORE_READ(skc, skc_family);
	e->sport = BPF_CORE_READ(skc, skc_num);
	e->dport = bpf_ntohs(BPF_CORE_READ(skc, skc_dport));
	e->state = BPF_CORE_READ(skc, skc_state);
	e->netns_inum = BPF_CORE_READ(skc, skc_net.net, ns.inum);
	if (e->family == AF_INET6) {
		BPF_CORE_READ_INTO(&e->saddr, skc, skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->daddr, skc, skc_v6_daddr.in6_u.u6_addr8);
	} else {
		__builtin_memset(e->saddr, 0, sizeof(e->saddr));
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		BPF_CORE_READ_INTO((__u32 *)e->saddr, skc, skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)e->daddr, skc, skc_daddr);
	}
	e->time_ns = bpf_ktime_get_boot_ns();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->_pad = 0;
}

static __always_inline struct retrans_event *reserve(__u32 slot)
{
	struct retrans_event *e;

	counter_add(slot, 1);
	if (!rate_limit_pass(max_events_per_second)) {
		counter_add(SLOT_SUPPRESSED, 1);
		return NULL;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		counter_add(SLOT_RINGBUF_FULL, 1);
	return e;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(bq_tcp_retransmit_skb, const struct sock *sk, const struct sk_buff *skb, int err)
{
	struct retrans_event *e = reserve(SLOT_SKB);
	const struct inet_connection_sock *icsk = (const struct inet_connection_sock *)sk;
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	struct tcp_skb_cb *cb = (struct tcp_skb_cb *)skb->cb;

	if (!e)
		return 0;
	fill_common(e, &sk->__sk_common);
	e->event = EVENT_SKB;
	e->err = err;
	e->ca_state = BPF_CORE_READ_BITFIELD_PROBED(icsk, icsk_ca_state);
	e->retransmits = BPF_CORE_READ(icsk, icsk_retransmits);
	e->snd_una = BPF_CORE_READ(tp, snd_una);
	e->seq = BPF_CORE_READ(cb, seq);
	e->end_seq = BPF_CORE_READ(cb, end_seq);
	e->tcp_flags = BPF_CORE_READ(cb, tcp_flags);
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&events));
	return 0;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(bq_tcp_retransmit_synack, const struct sock *sk, const struct request_sock *req)
{
	struct retrans_event *e = reserve(SLOT_SYNACK);

	if (!e)
		return 0;
	/* The request socket holds the connection's addresses; sk is the listener. */
	fill_common(e, &req->__req_common);
	e->event = EVENT_SYNACK;
	e->err = 0;
	e->ca_state = 0;
	e->retransmits = BPF_CORE_READ(req, num_retrans);
	e->snd_una = 0;
	e->seq = BPF_CORE_READ((struct tcp_request_sock *)req, snt_isn);
	e->end_seq = e->seq + 1;
	e->tcp_flags = 0;
	bpf_ringbuf_submit(e, ringbuf_wakeup_flags(&events));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
