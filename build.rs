//! Compiles every `*.bpf.c` under `src/` into a libbpf-rs skeleton `$OUT_DIR/<stem>.skel.rs`.
//! A tracer includes its skeleton with `bianque::bpf_skeleton!("<stem>")`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn find_bpf_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            find_bpf_sources(&path, out);
        } else if path.to_string_lossy().ends_with(".bpf.c") {
            out.push(path);
        }
    }
}

/// The newest modification time of the files in `dir` with one of `exts`.
fn newest(dir: &Path, exts: &[&str]) -> Option<std::time::SystemTime> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| exts.iter().any(|ext| x == *ext))
        })
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}

/// The skeleton is newer than its `.bpf.c`, the headers beside it, the shared headers and
/// this build script.
fn up_to_date(skel: &Path, src: &Path, include_dir: &Path) -> bool {
    let Some(built) = fs::metadata(skel).ok().and_then(|m| m.modified().ok()) else {
        return false;
    };
    let inputs = [
        fs::metadata(src).ok().and_then(|m| m.modified().ok()),
        newest(include_dir, &["h"]),
        newest(Path::new("bpf"), &["h"]),
        fs::metadata("build.rs")
            .ok()
            .and_then(|m| m.modified().ok()),
    ];
    inputs.iter().flatten().all(|t| *t < built)
}

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut sources = Vec::new();
    find_bpf_sources(Path::new("src"), &mut sources);
    sources.sort();
    for src in &sources {
        let file = src.file_name().unwrap().to_string_lossy();
        let stem = file.trim_end_matches(".bpf.c");
        let include_dir = src.parent().unwrap();
        let skel = out_dir.join(format!("{stem}.skel.rs"));
        if up_to_date(&skel, src, include_dir) {
            continue;
        }
        libbpf_cargo::SkeletonBuilder::new()
            .source(src)
            .clang_args([
                "-I".as_ref(),
                Path::new("bpf").as_os_str(),
                "-I".as_ref(),
                include_dir.as_os_str(),
                "-mcpu=v3".as_ref(),
                "-Wall".as_ref(),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building BPF skeleton for {}: {e:#}", src.display()));
        println!("cargo:rerun-if-changed={}", src.display());
        // Each tracer keeps its C header (event struct) next to its .bpf.c.
        for header in fs::read_dir(include_dir).into_iter().flatten().flatten() {
            if header.path().extension().is_some_and(|e| e == "h") {
                println!("cargo:rerun-if-changed={}", header.path().display());
            }
        }
    }
    // `src` as a whole, so that a new `.bpf.c` is picked up; objects whose sources did not
    // change are not rebuilt (see `up_to_date`), so a Rust-only edit costs no clang run.
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-changed=build.rs");
}
