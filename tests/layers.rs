//! The layering rule of docs/architecture.md, checked: every `crate::…` path in `src/` (in `use`
//! lines and inline, comments aside) must point to a lower layer or stay inside its own unit, and
//! no plugin may reach another plugin. A failure prints each offending line.
//!
//! Units are the top-level modules, except in the plugin folders (`metrics/`, `events/`,
//! `autotracing/`), where each tracer (`metrics/uptime.rs`, `events/dropwatch/`) is its own unit.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules and their layer; within a layer the order is the one shown (a module may
/// use those listed before it in a lower rank only).
const LAYERS: &[(&str, u32)] = &[
    // 0: leaves
    ("record", 0),
    ("config", 0),
    ("exposition", 0),
    ("host", 0),
    ("http", 0),
    // 1: kernel interfaces
    ("bpf", 10),
    ("procfs", 10),
    ("cgroupfs", 11),
    ("profiler", 12),
    // 2: services
    ("container", 20),
    ("store", 20),
    ("incidents", 21),
    // 3: the tracer framework
    ("tracer", 30),
    // 4: plugins
    ("metrics", 40),
    ("events", 40),
    ("autotracing", 40),
    // 5: the surface
    ("server", 50),
    ("agent", 51),
];

const PLUGIN_FOLDERS: &[&str] = &["metrics", "events", "autotracing"];

/// Macros exported at the crate root (`crate::bpf_skeleton!`): usable from anywhere.
const ROOT_MACROS: &[&str] = &["bpf_skeleton"];

fn rank(top: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == top).map(|(_, r)| *r)
}

/// The unit a module path (`events::dropwatch::x`) belongs to.
fn unit(path: &[String]) -> String {
    match path {
        [top, plugin, ..] if PLUGIN_FOLDERS.contains(&top.as_str()) => format!("{top}::{plugin}"),
        [top, ..] => top.clone(),
        [] => String::new(),
    }
}

/// The module path of a source file (`src/events/dropwatch/mod.rs` → `events::dropwatch`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a line without its `//` comment (string literals holding `//` are rare enough in
/// this tree that a URL in a string only hides the rest of that line).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The first segments of every `crate::` path in `code`: `crate::a::b` gives `a`;
/// `crate::{a::b, c}` gives `a` and `c`.
fn crate_targets(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        // `bianque_crate::x` or `$crate::` are not ours.
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        out.push(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                item.push(c);
            }
            out.push(first_segment(&item));
        } else {
            out.push(first_segment(rest));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn first_segment(s: &str) -> String {
    s.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The second segment after `crate::<top>::` where `top` is a plugin folder (for the unit).
fn plugin_of(code: &str, top: &str) -> Option<String> {
    let key = format!("crate::{top}::");
    let i = code.find(&key)?;
    let s = first_segment(&code[i + key.len()..]);
    (!s.is_empty()).then_some(s)
}

#[derive(Debug, PartialEq)]
struct Violation {
    at: String,
    line: String,
    why: String,
}

/// Checks one file's text; `module` is its module path.
fn check_source(file: &str, module: &[String], text: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some(top) = module.first() else {
        return out; // the crate root declares modules only
    };
    let Some(from_rank) = rank(top) else {
        out.push(Violation {
            at: file.to_string(),
            line: String::new(),
            why: format!("module `{top}` has no layer: add it to LAYERS in tests/layers.rs and to docs/architecture.md"),
        });
        return out;
    };
    let from_unit = unit(module);
    for (n, line) in text.lines().enumerate() {
        let code = code_of(line);
        for target in crate_targets(code) {
            if ROOT_MACROS.contains(&target.as_str()) {
                continue;
            }
            let Some(to_rank) = rank(&target) else {
                out.push(Violation {
                    at: format!("{file}:{}", n + 1),
                    line: line.trim().to_string(),
                    why: format!("`crate::{target}` is not a module with a layer"),
                });
                continue;
            };
            let mut to_path = vec![target.clone()];
            if PLUGIN_FOLDERS.contains(&target.as_str()) {
                if let Some(p) = plugin_of(code, &target) {
                    to_path.push(p);
                }
            }
            let to_unit = unit(&to_path);
            if to_unit == from_unit || to_rank < from_rank {
                continue;
            }
            let why = if to_rank == 40 && from_rank == 40 {
                format!("plugin `{from_unit}` uses plugin `{to_unit}`: move what they share to a lower layer")
            } else {
                format!("`{from_unit}` (layer {from_rank}) uses `{to_unit}` (layer {to_rank}): an edge that does not go down")
            };
            out.push(Violation {
                at: format!("{file}:{}", n + 1),
                line: line.trim().to_string(),
                why,
            });
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_edge_goes_down_a_layer_and_no_plugin_uses_another() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut tops = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        // The binary (main.rs, cli/) sits on top of everything.
        if rel == Path::new("main.rs") || rel == Path::new("lib.rs") || rel.starts_with("cli") {
            continue;
        }
        let module = module_of(rel);
        tops.insert(module[0].clone());
        let text = std::fs::read_to_string(f).expect("read source");
        violations.extend(check_source(
            &format!("src/{}", rel.display()),
            &module,
            &text,
        ));
    }
    let report: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}\n    {}", v.at, v.why, v.line))
        .collect();
    assert!(
        violations.is_empty(),
        "{} edges break the layering (docs/architecture.md):\n{}",
        violations.len(),
        report.join("\n")
    );
    // Every layer listed still exists (a renamed module must be renamed here too).
    for (m, _) in LAYERS {
        assert!(
            tops.contains(*m),
            "LAYERS names `{m}`, which is not a module in src/"
        );
    }
}

#[test]
fn the_checker_finds_what_it_should() {
    let m = |p: &str| p.split("::").map(str::to_string).collect::<Vec<_>>();
    let bad = "use crate::tracer::RunContext;\nuse crate::{record::Record, server::x};\n";
    let v = check_source("src/bpf/mod.rs", &m("bpf"), bad);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].why.contains("`tracer` (layer 30)"), "{v:?}");
    assert_eq!(v[0].at, "src/bpf/mod.rs:1");
    assert!(v[1].why.contains("`server`"), "{v:?}");
    let plugins = "use crate::metrics::cgroup::Snapshot;\nlet x = crate::events::dropwatch::f();";
    let v = check_source("src/metrics/cpu.rs", &m("metrics::cpu"), plugins);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0]
        .why
        .contains("plugin `metrics::cpu` uses plugin `metrics::cgroup`"));
    let fine = "use crate::bpf::hist;\nuse crate::events::dropwatch::skel; // own unit\n\
                // crate::server::x in a comment\ncrate::bpf_skeleton!(\"x\");";
    assert!(check_source("src/events/dropwatch/mod.rs", &m("events::dropwatch"), fine).is_empty());
    assert_eq!(
        crate_targets("use crate::{a::b, c::{d, e}, f};"),
        ["a", "c", "f"]
    );
}
