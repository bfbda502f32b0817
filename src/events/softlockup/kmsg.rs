//! The kernel log as `/dev/kmsg` gives it (one record per read), and a parser that turns the
//! soft-lockup report (header line, registers, call trace) into one event. Pure functions,
//! tested on real-format lines.

/// One /dev/kmsg record: `prio,seq,ts_us,flags[,…];message` plus ` KEY=value` dictionary lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgRecord {
    /// syslog facility: 0 is the kernel; anything written to /dev/kmsg from user space gets
    /// another facility (the kernel forces LOG_USER when the writer asks for 0).
    pub facility: u8,
    pub level: u8,
    pub seq: u64,
    /// Microseconds since boot (the printk clock).
    pub ts_us: u64,
    pub message: String,
}

impl KmsgRecord {
    pub fn from_kernel(&self) -> bool {
        self.facility == 0
    }
}

/// Parses one record read from /dev/kmsg; `None` if it is malformed.
pub fn parse_record(raw: &[u8]) -> Option<KmsgRecord> {
    let text = std::str::from_utf8(raw).ok()?;
    let (header, rest) = text.split_once(';')?;
    let mut fields = header.split(',');
    let prio: u32 = fields.next()?.trim().parse().ok()?;
    let seq = fields.next()?.trim().parse().ok()?;
    let ts_us = fields.next()?.trim().parse().ok()?;
    let message = rest.split('\n').next().unwrap_or("");
    Some(KmsgRecord {
        facility: (prio >> 3).min(255) as u8,
        level: (prio & 7) as u8,
        seq,
        ts_us,
        message: unescape(message),
    })
}

/// /dev/kmsg escapes non-printable bytes as `\xNN`.
fn unescape(s: &str) -> String {
    if !s.contains("\\x") {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1] == b'x' {
            if let Some(v) = std::str::from_utf8(&bytes[i + 2..i + 4])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The header of a soft-lockup report:
/// `watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [kworker/3:1:123]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockupHeader {
    pub cpu: u32,
    pub stuck_seconds: u64,
    pub comm: String,
    pub pid: u32,
}

pub fn parse_lockup_header(message: &str) -> Option<LockupHeader> {
    let rest =
        &message[message.find("BUG: soft lockup - CPU#")? + "BUG: soft lockup - CPU#".len()..];
    let (cpu, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("stuck for ")?;
    let (secs, rest) = rest.split_once("s!")?;
    let inner = rest.trim().strip_prefix('[')?.strip_suffix(']')?;
    // comm may contain ':' (kworker/3:1): the pid follows the last one.
    let (comm, pid) = inner.rsplit_once(':')?;
    Some(LockupHeader {
        cpu: cpu.parse().ok()?,
        stuck_seconds: secs.trim().parse().ok()?,
        comm: comm.to_string(),
        pid: pid.trim().parse().ok()?,
    })
}

/// A soft lockup with what the kernel printed after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockup {
    pub header: LockupHeader,
    pub ts_us: u64,
    /// `RIP: 0010:func+0x3e/0xb0` → `func+0x3e/0xb0` (where the CPU was stuck).
    pub rip: Option<String>,
    /// Call-trace frames, innermost first, without the unreliable (`? `) ones.
    pub stack: Vec<String>,
    /// Every line of the report, as printed.
    pub lines: Vec<String>,
}

/// Lines of one report beyond this are dropped (an all-CPU backtrace can be long).
pub const MAX_REPORT_LINES: usize = 400;

/// Assembles soft-lockup reports from consecutive kernel log messages.
#[derive(Debug, Default)]
pub struct LockupParser {
    current: Option<Lockup>,
    in_trace: bool,
}

impl LockupParser {
    /// Feeds one kernel message; returns a report that this message completed (a new header
    /// completes the previous report).
    pub fn feed(&mut self, message: &str, ts_us: u64) -> Option<Lockup> {
        if let Some(header) = parse_lockup_header(message) {
            let done = self.current.take();
            self.in_trace = false;
            self.current = Some(Lockup {
                header,
                ts_us,
                rip: None,
                stack: Vec::new(),
                lines: vec![message.to_string()],
            });
            return done;
        }
        let cur = self.current.as_mut()?;
        if cur.lines.len() < MAX_REPORT_LINES {
            cur.lines.push(message.to_string());
        }
        let line = message.trim();
        if let Some(rip) = line.strip_prefix("RIP: ") {
            if cur.rip.is_none() {
                // `0010:func+0x3e/0xb0`: the part after the segment selector.
                cur.rip = Some(rip.split_once(':').map_or(rip, |(_, r)| r).to_string());
            }
        } else if line == "Call Trace:" {
            self.in_trace = true;
        } else if self.in_trace {
            if line == "</TASK>" {
                self.in_trace = false;
                return self.current.take();
            }
            let frame = !line.starts_with('<') && !line.starts_with("? ") && line.contains("+0x");
            if frame && cur.stack.len() < 64 {
                cur.stack.push(line.to_string());
            }
        }
        None
    }

    /// The report in progress, if the kernel went quiet (call after an idle gap).
    pub fn flush(&mut self) -> Option<Lockup> {
        self.in_trace = false;
        self.current.take()
    }

    pub fn pending(&self) -> bool {
        self.current.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_with_facility() {
        let r = parse_record(b"4,334,1374494034,-;CPU: 0 UID: 0 PID: 26154 Comm: tail Not tainted 6.18.44-fc-v782 #1 PREEMPT(none) \n").unwrap();
        assert_eq!(r.facility, 0);
        assert_eq!(r.level, 4);
        assert_eq!(r.seq, 334);
        assert_eq!(r.ts_us, 1374494034);
        assert!(r.message.starts_with("CPU: 0 UID: 0 PID: 26154"));
        assert!(r.from_kernel());
        // Written by a user process (`echo hi > /dev/kmsg`): facility 1 (user), level 4.
        let u = parse_record(b"12,900,1500000000,-;hi\n").unwrap();
        assert_eq!(u.facility, 1);
        assert!(!u.from_kernel());
        // Dictionary lines are not part of the message; escapes are undone.
        let d = parse_record(b"6,5,10,-;a\\x09b\n SUBSYSTEM=net\n DEVICE=n2\n").unwrap();
        assert_eq!(d.message, "a\tb");
        assert_eq!(parse_record(b"garbage"), None);
    }

    #[test]
    fn header_variants() {
        assert_eq!(
            parse_lockup_header(
                "watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [kworker/3:1:123]"
            ),
            Some(LockupHeader {
                cpu: 3,
                stuck_seconds: 23,
                comm: "kworker/3:1".into(),
                pid: 123
            })
        );
        assert_eq!(
            parse_lockup_header("BUG: soft lockup - CPU#0 stuck for 22s! [stress-ng:4567]"),
            Some(LockupHeader {
                cpu: 0,
                stuck_seconds: 22,
                comm: "stress-ng".into(),
                pid: 4567
            })
        );
        assert_eq!(
            parse_lockup_header("Memory cgroup out of memory: Killed process 1 (x)"),
            None
        );
        assert_eq!(
            parse_lockup_header("BUG: soft lockup - CPU#x stuck for 2s! [a:1]"),
            None
        );
    }

    /// A report as kernel/watchdog.c and x86 show_regs print it, one kmsg record per line
    /// (register and trace lines in the kernel's real format).
    const REPORT: &[&str] = &[
        "watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [spin:4242]",
        "Modules linked in:",
        "CPU: 1 UID: 0 PID: 4242 Comm: spin Tainted: G             L      6.18.44-fc-v782 #1 PREEMPT(none) ",
        "Tainted: [L]=SOFTLOCKUP",
        "RIP: 0010:delay_tsc+0x3e/0xb0",
        "Code: 8d 34 19 48 39 d5 48 89 75 60 0f 95 c2 48 29 d8 <48> 89 46 08",
        "RSP: 0018:ffffc90000123e48 EFLAGS: 00000287",
        "RAX: 0000000000012ce1 RBX: 0000000000002020 RCX: 000055f3eda92310",
        "Call Trace:",
        " <IRQ>",
        " ? watchdog_timer_fn+0x1d4/0x260",
        " </IRQ>",
        " <TASK>",
        " ? asm_sysvec_apic_timer_interrupt+0x1a/0x20",
        " spin_work+0x20/0x40",
        " process_one_work+0x176/0x330",
        " worker_thread+0x252/0x390",
        " kthread+0xd2/0x100",
        " ret_from_fork+0x34/0x50",
        " ret_from_fork_asm+0x1a/0x30",
        " </TASK>",
    ];

    #[test]
    fn a_whole_report_is_one_lockup() {
        let mut p = LockupParser::default();
        assert_eq!(p.feed("unrelated line before", 1), None);
        let mut done = None;
        for (i, l) in REPORT.iter().enumerate() {
            let r = p.feed(l, 100 + i as u64);
            if i + 1 < REPORT.len() {
                assert_eq!(r, None, "line {i}");
            } else {
                done = r;
            }
        }
        let l = done.expect("complete at </TASK>");
        assert_eq!(l.header.cpu, 1);
        assert_eq!(l.header.pid, 4242);
        assert_eq!(l.header.comm, "spin");
        assert_eq!(l.header.stuck_seconds, 26);
        assert_eq!(l.ts_us, 100);
        assert_eq!(l.rip.as_deref(), Some("delay_tsc+0x3e/0xb0"));
        assert_eq!(
            l.stack,
            vec![
                "spin_work+0x20/0x40",
                "process_one_work+0x176/0x330",
                "worker_thread+0x252/0x390",
                "kthread+0xd2/0x100",
                "ret_from_fork+0x34/0x50",
                "ret_from_fork_asm+0x1a/0x30",
            ]
        );
        assert_eq!(l.lines.len(), REPORT.len());
        assert!(!p.pending());
        assert_eq!(p.feed(" next_line+0x1/0x2", 999), None, "no report open");
    }

    #[test]
    fn a_report_cut_short_is_flushed_and_a_new_header_completes_the_old() {
        let mut p = LockupParser::default();
        p.feed(REPORT[0], 1);
        p.feed(REPORT[1], 2);
        let first = p
            .feed("watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [b:7]", 3)
            .unwrap();
        assert_eq!(first.header.pid, 4242);
        assert_eq!(first.lines.len(), 2);
        assert!(p.pending());
        let second = p.flush().unwrap();
        assert_eq!(second.header.cpu, 0);
        assert_eq!(p.flush(), None);
    }
}
