//! The house keeps its map: every `crate::<room>` path in `src/` (in `use` lines and inline) points down
//! the layer order written once below, and no two files import each other in a cycle. Rooms are the
//! top-level folders and files of `src/`. Test code (`#[cfg(test)]` modules) counts too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first: a room may use the rooms before it, never one after it.
const LAYERS: &[&str] = &[
    "clock",
    // The background threads' stop signal: used by tokens (sync, flush), transport (health checks), ops.
    "shutdown",
    // The rustls provider, PEM reading, trust roots and client configs: shared by `tokens` (the
    // PostgreSQL client) and `transport` (edge, upstreams), so below both; it uses no other room.
    "crypto",
    "config",
    "limiter",
    "tokens",
    "gateway",
    "telemetry",
    "transport",
    "ops",
    "logging",
    "server",
    "cli",
    "main",
    "lib",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/tokens/store/pg.rs` → `tokens`; `src/cli.rs` → `cli`.
fn room(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_owned()
}

/// The module path of a file: `src/tokens/store/pg.rs` → `tokens::store::pg`; `mod.rs` names its folder.
fn module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_str().unwrap().to_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// Every `crate::a::b::c` path in `text` (comments skipped), as its segments.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let path: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segs: Vec<String> = path
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if !segs.is_empty() {
                out.push(segs);
            }
            rest = after;
        }
        // `use crate::x::{a, b}` groups: the braces' first names are modules or items of x; x is enough.
    }
    out
}

#[test]
fn rooms_depend_only_downward_and_files_never_in_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let rank = |r: &str| LAYERS.iter().position(|l| *l == r);
    let modules: BTreeMap<String, PathBuf> =
        files.iter().map(|f| (module(&src, f), f.clone())).collect();
    let mut upward = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from_room = room(&src, f);
        let from_rank = rank(&from_room)
            .unwrap_or_else(|| panic!("room {from_room:?} ({}) is not in LAYERS", f.display()));
        let text = std::fs::read_to_string(f).unwrap();
        let from_mod = module(&src, f);
        for segs in crate_paths(&text) {
            let to_room = &segs[0];
            let Some(to_rank) = rank(to_room) else {
                continue;
            }; // a macro or item at the crate root
            if to_rank > from_rank {
                upward.push(format!("{} uses crate::{}", f.display(), segs.join("::")));
            }
            // The longest module prefix of the path is the file it names.
            let target = (1..=segs.len())
                .rev()
                .map(|n| segs[..n].join("::"))
                .find(|m| modules.contains_key(m));
            if let Some(t) = target {
                if t != from_mod && !from_mod.starts_with(&format!("{t}::")) {
                    edges.entry(from_mod.clone()).or_default().insert(t);
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports up the layers:\n{}",
        upward.join("\n")
    );
    // No cycle between files (through `crate::` paths): a depth-first search for a back edge.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(1) => {
                let i = stack.iter().position(|s| s == m).unwrap();
                let mut cycle = stack[i..].to_vec();
                cycle.push(m.to_owned());
                return Some(cycle);
            }
            Some(_) => return None,
            None => {}
        }
        state.insert(m.to_owned(), 1);
        stack.push(m.to_owned());
        for n in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(n, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut state, &mut Vec::new()) {
            panic!("files import each other in a cycle: {}", cycle.join(" -> "));
        }
    }
}
