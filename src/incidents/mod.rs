//! Incidents: the records about one target (a container, a memory cgroup, or the host) that came
//! close together in time, grouped into one story with a kind, a severity, a start and an end,
//! the evidence (record ids) and a one-paragraph explanation. The rules are documented in
//! docs/incidents.md; this module is their only implementation.
//!
//! Incidents are derived from the store's records, never kept apart from them: a restarted agent
//! (or `bianque incidents` on a stopped one) finds the same incidents with the same ids. A closed
//! incident is also written back as a record (`tracer_type = "incident"`) so that it ships and
//! streams like any other; those records are never evidence themselves.

mod explain;

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::record::{format_time_ns, ContainerFields, Record, TracerType};
use crate::store::{Query, Store};

pub use explain::{chain_of, summary, Chain};

/// The tracer name of incident records.
pub const INCIDENT_TRACER: &str = "incident";

/// How incidents are cut from records.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Records of one target further apart than this start a new incident; an incident whose
    /// last record is older than this is closed.
    pub gap_ns: i64,
    /// Evidence ids kept per incident (the count of all records is kept too).
    pub max_evidence: usize,
    /// Records read from the store for one computation, newest first.
    pub max_records: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gap_ns: 5 * 60 * 1_000_000_000,
            max_evidence: 200,
            max_records: 20_000,
        }
    }
}

/// What an incident is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Target {
    /// `container`, `cgroup` (a memory cgroup outside any known container) or `host`.
    pub kind: &'static str,
    /// The container id, the memory cgroup path, or `host`.
    pub id: String,
    /// A name for people: the container's name, the cgroup path, `host`.
    pub name: String,
}

/// One record as an incident sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub tracer_id: String,
    pub tracer_name: String,
    pub tracer_time: String,
    #[serde(skip)]
    pub time_ns: i64,
    /// One line about the record (the same rules as the explanation).
    pub summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    /// Stable: derived from the target and the first record, so a restart finds the same id.
    pub id: String,
    pub target: Target,
    /// The chain that explains it: `memory`, `cpu`, `io`, `network`, `lockup`.
    pub kind: &'static str,
    /// `critical`, `warning` or `info`.
    pub severity: &'static str,
    pub start: String,
    pub end: String,
    #[serde(skip)]
    pub start_ns: i64,
    #[serde(skip)]
    pub end_ns: i64,
    /// Still open: its last record is younger than the gap.
    pub open: bool,
    /// Records per tracer.
    pub tracers: BTreeMap<String, u64>,
    pub records: u64,
    /// The first `max_evidence` records, oldest first.
    pub evidence: Vec<Evidence>,
    pub explanation: String,
    #[serde(skip)]
    container: Option<ContainerFields>,
}

/// A parsed store record: what grouping and the rules need.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub tracer: String,
    pub time_ns: i64,
    pub container: Option<ContainerFields>,
    pub data: serde_json::Value,
}

impl Item {
    /// From a record's stored JSON; None for what is not a record or is an incident itself.
    pub fn parse(body: &str) -> Option<Item> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let tracer = v.get("tracer_name")?.as_str()?.to_string();
        if tracer == INCIDENT_TRACER || v["tracer_type"] == "incident" {
            return None;
        }
        let time = v.get("tracer_time")?.as_str()?;
        let time_ns = chrono::DateTime::parse_from_rfc3339(time)
            .ok()?
            .timestamp_nanos_opt()?;
        let container = v
            .get("container_id")
            .and_then(|c| c.as_str())
            .filter(|c| !c.is_empty())
            .map(|_| serde_json::from_value::<ContainerFields>(v.clone()).unwrap_or_default());
        Some(Item {
            id: v.get("tracer_id")?.as_str()?.to_string(),
            tracer,
            time_ns,
            container,
            data: v.get("tracer_data").map(slim).unwrap_or_default(),
        })
    }

    /// The target: the container; else the memory cgroup the record names; else the host.
    pub fn target(&self) -> Target {
        if let Some(c) = &self.container {
            let name = if c.name.is_empty() {
                c.id.chars().take(12).collect()
            } else {
                c.name.clone()
            };
            return Target {
                kind: "container",
                id: c.id.clone(),
                name,
            };
        }
        const CGROUP_FIELDS: &[&str] = &[
            "victim.memory_cgroup_path",
            "memory_cgroup_path",
            "trigger.memory_cgroup_path",
            "target_memory_cgroup_path",
        ];
        for f in CGROUP_FIELDS {
            if let Some(p) = explain::str_at(&self.data, f).filter(|p| !p.is_empty() && *p != "/") {
                return Target {
                    kind: "cgroup",
                    id: p.to_string(),
                    name: p.to_string(),
                };
            }
        }
        Target {
            kind: "host",
            id: "host".into(),
            name: "host".into(),
        }
    }
}

/// Groups records (any order) into incidents, newest first. `now_ns` decides which are open.
/// Records of tracers outside every chain (signal, container lifecycle) join an incident of
/// their target that is already open, but never start one.
pub fn group(items: &[Item], opts: &Options, now_ns: i64) -> Vec<Incident> {
    let mut sorted: Vec<&Item> = items.iter().collect();
    sorted.sort_by(|a, b| a.time_ns.cmp(&b.time_ns).then_with(|| a.id.cmp(&b.id)));
    // Per target, the incident being built (index into `out`).
    let mut current: BTreeMap<Target, usize> = BTreeMap::new();
    let mut members: Vec<Vec<&Item>> = Vec::new();
    for item in sorted {
        let target = item.target();
        let joins = current
            .get(&target)
            .copied()
            .filter(|&i| item.time_ns - members[i].last().map_or(0, |l| l.time_ns) <= opts.gap_ns);
        match joins {
            Some(i) => members[i].push(item),
            None if chain_of(&item.tracer).is_some() => {
                current.insert(target, members.len());
                members.push(vec![item]);
            }
            None => {}
        }
    }
    let mut out: Vec<Incident> = members.iter().map(|m| build(m, opts, now_ns)).collect();
    out.sort_by(|a, b| b.start_ns.cmp(&a.start_ns).then_with(|| a.id.cmp(&b.id)));
    out
}

fn build(members: &[&Item], opts: &Options, now_ns: i64) -> Incident {
    let first = members[0];
    let last = members[members.len() - 1];
    let target = first.target();
    let mut tracers: BTreeMap<String, u64> = BTreeMap::new();
    for m in members {
        *tracers.entry(m.tracer.clone()).or_default() += 1;
    }
    let verdict = explain::explain(&target, members);
    Incident {
        id: incident_id(&target, first),
        kind: verdict.chain.as_str(),
        severity: verdict.severity,
        start: format_time_ns(first.time_ns),
        end: format_time_ns(last.time_ns),
        start_ns: first.time_ns,
        end_ns: last.time_ns,
        open: now_ns - last.time_ns <= opts.gap_ns,
        tracers,
        records: members.len() as u64,
        evidence: members
            .iter()
            .take(opts.max_evidence)
            .map(|m| Evidence {
                tracer_id: m.id.clone(),
                tracer_name: m.tracer.clone(),
                tracer_time: format_time_ns(m.time_ns),
                time_ns: m.time_ns,
                summary: summary(m),
            })
            .collect(),
        explanation: verdict.text,
        container: members.iter().find_map(|m| m.container.clone()),
        target,
    }
}

/// A UUIDv7 whose time is the first record's and whose other bits hash the target and that
/// record's id: stable across restarts, unique per incident, time-ordered like record ids.
fn incident_id(target: &Target, first: &Item) -> String {
    // FNV-1a, twice with different seeds: stable across Rust versions, unlike DefaultHasher.
    let fnv = |seed: u64| {
        let mut h = seed;
        for b in target.id.bytes().chain([0u8]).chain(first.id.bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        h
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x8422_2325_cbf2_9ce4));
    let mut rand = [0u8; 10];
    rand[..8].copy_from_slice(&a.to_be_bytes());
    rand[8..].copy_from_slice(&b.to_be_bytes()[..2]);
    let ms = (first.time_ns.max(0) / 1_000_000) as u64;
    uuid::Builder::from_unix_timestamp_millis(ms, &rand)
        .into_uuid()
        .simple()
        .to_string()
}

/// Filters for reading incidents (like `/events`).
#[derive(Debug, Clone, Default)]
pub struct IncidentQuery {
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    /// A container id (or prefix), a cgroup path, or `host`.
    pub target: Option<String>,
    pub open_only: bool,
    pub limit: usize,
}

/// Reads the records of the window (and one gap before it, so an incident that began just
/// before `since` is whole) and groups them.
pub fn load(
    store: &Store,
    q: &IncidentQuery,
    opts: &Options,
    now_ns: i64,
) -> Result<Vec<Incident>> {
    // Page by page, each page parsed and dropped before the next: a flood's stored records (with
    // their stacks) never sit in memory at once, only the slim items grouping needs.
    let mut items: Vec<Item> = Vec::new();
    let mut read = 0;
    let mut cursor = None;
    while read < opts.max_records {
        let page = store.query_page(&Query {
            since_ns: q.since_ns.map(|s| s - opts.gap_ns),
            until_ns: q.until_ns,
            cursor: cursor.take(),
            limit: (opts.max_records - read).min(PAGE_ROWS),
            ..Default::default()
        })?;
        read += page.rows.len();
        items.extend(page.rows.iter().filter_map(|r| Item::parse(r)));
        match page.next {
            Some(next) if !page.rows.is_empty() => cursor = Some(next),
            _ => break,
        }
    }
    let mut out = group(&items, opts, now_ns);
    out.retain(|i| {
        q.since_ns.is_none_or(|s| i.end_ns >= s)
            && (!q.open_only || i.open)
            && q.target.as_deref().is_none_or(|t| {
                i.target.id.starts_with(t) || i.target.name == t || i.target.kind == t
            })
    });
    if q.limit > 0 {
        out.truncate(q.limit);
    }
    Ok(out)
}

/// Records the background pass that writes closed incidents reads (newest first).
const WRITE_PASS_RECORDS: usize = 2_000;

/// Records read from the store per page while grouping.
const PAGE_ROWS: usize = 500;

/// A record's `tracer_data` without its long lists (stacks, frame lists): no rule reads them,
/// and a flood of records each carrying a stack would otherwise be held whole while grouping.
fn slim(data: &serde_json::Value) -> serde_json::Value {
    const LONGEST_KEPT_LIST: usize = 8;
    match data {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .filter(|(_, v)| v.as_array().is_none_or(|a| a.len() <= LONGEST_KEPT_LIST))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// One incident by id: found by grouping around the time its id carries.
pub fn find(store: &Store, id: &str, opts: &Options, now_ns: i64) -> Result<Option<Incident>> {
    let Ok(uuid) = uuid::Uuid::try_parse(id) else {
        return Ok(None);
    };
    let Some((secs, nanos)) = uuid.get_timestamp().map(|t| t.to_unix()) else {
        return Ok(None);
    };
    let start_ns = secs as i64 * 1_000_000_000 + nanos as i64;
    // The first record is at most a millisecond after the id's time; its incident may run on
    // for long: read a day after it.
    let q = IncidentQuery {
        since_ns: Some(start_ns - 1_000_000),
        until_ns: Some(start_ns + 24 * 3600 * 1_000_000_000),
        ..Default::default()
    };
    Ok(load(store, &q, opts, now_ns)?
        .into_iter()
        .find(|i| i.id == id))
}

/// The record a closed incident is written as.
pub fn to_record(i: &Incident, hostname: &str, region: &str) -> Record {
    let mut r = Record::new(
        INCIDENT_TRACER,
        TracerType::Incident,
        i.start_ns,
        hostname,
        region,
        i.container.clone(),
        serde_json::json!({
            "incident_id": i.id,
            "kind": i.kind,
            "severity": i.severity,
            "target": i.target,
            "start": i.start,
            "end": i.end,
            "duration_ns": i.end_ns - i.start_ns,
            "records": i.records,
            "tracers": i.tracers,
            "evidence": i.evidence.iter().map(|e| &e.tracer_id).collect::<Vec<_>>(),
            "explanation": i.explanation,
        }),
    );
    r.tracer_id = i.id.clone();
    r
}

/// Writes every closed incident of the last `window_ns` as a record. The store ignores a
/// record id it already has, so calling this again (or after a restart) writes each once.
pub fn write_closed(
    store: &Store,
    hostname: &str,
    region: &str,
    window_ns: i64,
    now_ns: i64,
) -> Result<usize> {
    // The background pass reads fewer records than a request: it runs every 30 s whatever the
    // load, and under a flood the grouped items of 20,000 records cost the agent ~60 MB.
    let opts = Options {
        max_records: WRITE_PASS_RECORDS,
        ..Options::default()
    };
    let q = IncidentQuery {
        since_ns: Some(now_ns - window_ns),
        ..Default::default()
    };
    let mut written = 0;
    for i in load(store, &q, &opts, now_ns)?.iter().filter(|i| !i.open) {
        if store.get(&i.id)?.is_none() {
            store.save(to_record(i, hostname, region));
            written += 1;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests;
