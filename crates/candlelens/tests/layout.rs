//! The source tree keeps its shape: no import cycle between module files, internal code uses
//! the grouped paths (`crate::engine::model`, not the flat re-exports `crate::model` that exist
//! for users), and no file grows past 600 lines without saying why at its top.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a library file: `engine/model.rs` -> `["engine", "model"]`,
/// `studies/lre/mod.rs` -> `["studies", "lre"]`, `lib.rs` -> `[]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a file refers to, absolute from the crate root: `crate::a::b`, `super::c`
/// (resolved against the file's module) and the items of `use crate::a::{b, c::d}` /
/// `use super::{..}` groups, one level deep.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    // `super` is the parent module both of `a/b.rs` and of `a/b/mod.rs` (module `a::b`)
    let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
    let self_mod: Vec<String> = module.to_vec();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let (base, skip) = if rest.starts_with("crate::") {
            (Vec::new(), 7)
        } else if rest.starts_with("super::") {
            (parent.clone(), 7)
        } else if rest.starts_with("self::") {
            (self_mod.clone(), 6)
        } else {
            i += 1;
            continue;
        };
        if i > 0 && ident(bytes[i - 1]) {
            i += 1;
            continue;
        }
        let mut j = i + skip;
        let mut path = base.clone();
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            if j > start {
                path.push(bytes[start..j].iter().collect());
            }
            if j + 1 < bytes.len() && bytes[j] == ':' && bytes[j + 1] == ':' {
                j += 2;
                if j < bytes.len() && bytes[j] == '{' {
                    // a use group: each comma-separated entry extends the path
                    let close = bytes[j..].iter().position(|&c| c == '}').map(|k| j + k);
                    let Some(close) = close else { break };
                    let inner: String = bytes[j + 1..close].iter().collect();
                    for entry in inner.split(',') {
                        let mut p = path.clone();
                        p.extend(
                            entry
                                .trim()
                                .split("::")
                                .map(|s| s.trim().to_string())
                                .filter(|s| !s.is_empty() && s != "self"),
                        );
                        out.push(p);
                    }
                    j = close;
                    path.clear();
                    break;
                }
                continue;
            }
            break;
        }
        if !path.is_empty() {
            out.push(path);
        }
        i = j.max(i + 1);
    }
    out
}

struct Tree {
    /// module path -> file (relative to src)
    modules: BTreeMap<Vec<String>, PathBuf>,
    /// relative file -> its text
    files: BTreeMap<PathBuf, String>,
}

fn tree() -> Tree {
    let root = src();
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    let mut modules = BTreeMap::new();
    let mut files = BTreeMap::new();
    for p in paths {
        let rel = p.strip_prefix(&root).unwrap().to_path_buf();
        if rel.starts_with("bin") {
            continue;
        }
        files.insert(rel.clone(), std::fs::read_to_string(&p).unwrap());
        modules.insert(module_of(&rel), rel);
    }
    Tree { modules, files }
}

/// The module file a path lands in: its longest prefix that is a module.
fn resolve<'a>(t: &'a Tree, path: &[String]) -> Option<&'a PathBuf> {
    (1..=path.len())
        .rev()
        .find_map(|n| t.modules.get(&path[..n]))
}

#[test]
fn no_import_cycle_between_module_files() {
    let t = tree();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (rel, text) in &t.files {
        if rel == Path::new("lib.rs") {
            continue; // the facade: it re-exports everything and is imported by nothing inside
        }
        let module = module_of(rel);
        for r in references(&module, &code(text)) {
            if let Some(target) = resolve(&t, &r) {
                if target != rel && target != Path::new("lib.rs") {
                    edges.entry(rel.clone()).or_default().insert(target.clone());
                }
            }
        }
    }
    // a cycle is a file that reaches itself
    let mut cycles = Vec::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, trail)) = stack.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if next == start {
                    let mut c = trail.clone();
                    c.push(next.clone());
                    cycles.push(c);
                } else if seen.insert(next.clone()) {
                    let mut t2 = trail.clone();
                    t2.push(next.clone());
                    stack.push((next.clone(), t2));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between module files:\n{}",
        cycles
            .iter()
            .map(|c| c
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" -> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // the check sees the edges it should: the model runs blocks, blocks do not know the model
    let model = edges.get(Path::new("engine/model/mod.rs")).unwrap();
    assert!(model.contains(Path::new("engine/block/mod.rs")));
    assert!(!edges
        .get(Path::new("engine/block/mod.rs"))
        .unwrap()
        .contains(Path::new("engine/model/mod.rs")));
}

#[test]
fn internal_code_uses_the_grouped_paths() {
    let t = tree();
    let lib = &t.files[Path::new("lib.rs")];
    // the top-level modules lib.rs declares; anything else after `crate::` is a re-export
    let top: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    assert!(top.contains("engine") && top.contains("interp"), "{top:?}");
    let mut bad = Vec::new();
    for (rel, text) in &t.files {
        if rel == Path::new("lib.rs") {
            continue;
        }
        for r in references(&module_of(rel), &code(text)) {
            if resolve(&t, &r).is_some() {
                continue;
            }
            // `crate::X` where X is not a module: only for names lib.rs defines itself
            if !top.contains(&r[0]) {
                bad.push(format!("{}: crate::{}", rel.display(), r.join("::")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "use the module paths inside the crate:\n{}",
        bad.join("\n")
    );
}

#[test]
fn files_stay_small_or_say_why() {
    let root = src();
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    let mut long = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        let n = text.lines().count();
        let head: String = text.lines().take(12).collect::<Vec<_>>().join("\n");
        if n > MAX_LINES && !head.contains("Why this file is long") {
            long.push(format!("{} ({n} lines)", p.display()));
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines with no 'Why this file is long' note at the top: {long:?}"
    );
}
