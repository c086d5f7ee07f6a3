//! The layering of src/ (shared/docs/architecture.md), checked on the source text: a module
//! uses only modules of lower layers, and there are no import circles between the top-level
//! modules, nor between the files of the folders in [`ACYCLIC_FOLDERS`].
//!
//! The graph is built from the paths in the code (comments and string literals removed):
//! `use` trees and expression paths that start with `crate::`, `super::`, `self::` or the name
//! of a child module, each resolved to the file of the longest module prefix it names (a path
//! to an item of `a/b.rs` is an edge to `a/b.rs`; `super::X` of a re-exported `X` is an edge to
//! the parent file). Test code (`#[cfg(test)]` modules, inline or in their own file) counts for
//! the layer order but not for circles: nothing depends on a test module, so it cannot close a
//! circle of the code it tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: a module may use the modules before it, never one after it.
/// `util` holds generic helpers; `backend` the op interface and its CPU/CUDA implementations;
/// `weights` checkpoint reading; `cache` schedules and the component cache; `sampler` the
/// solvers; `tokenizer` the T5/CLIP tokenizers; `models` the networks (they ask the cache
/// context of `cache` what to compute); `pipeline` assembly and orchestration; `search` the
/// schedule search that drives pipelines; `error` the crate's one error type (it maps the
/// layers' errors to kinds, so it sits above them); `engine` the `Engine` and the family
/// interface, with the families that plug into it (see [`GROUPS`]).
const LAYERS: &[&str] = &[
    "util",
    "interrupt",
    "backend",
    "weights",
    "cache",
    "sampler",
    "tokenizer",
    "models",
    "pipeline",
    "search",
    "error",
    "engine",
];

/// Top-level modules that form one layer together. `families/` holds the model families that
/// implement the engine's family interface (`engine/family.rs`) and that the engine's registry
/// (`engine/registry.rs`) lists, so the two folders depend on each other as modules; as one
/// layer they are checked file by file instead: no circle between the files of both folders.
const GROUPS: &[(&str, &[&str])] = &[("engine", &["engine", "families"])];

/// The layer (or front door) a top-level module belongs to.
fn layer_of(top: &str) -> &str {
    GROUPS
        .iter()
        .find(|(_, members)| members.contains(&top))
        .map_or(top, |(name, _)| name)
}

/// The front doors: they may use every layer, and no layer may use them.
const FRONT_DOORS: &[&str] = &["cli", "ffi", "fuzzing"];

/// Folders whose files must not import each other in a circle.
const ACYCLIC_FOLDERS: &[&str] = &["pipeline", "search"];

// ---- source text ------------------------------------------------------------------------------

/// `src` with comments, string literals (plain, byte, raw) and char literals replaced by
/// spaces; newlines are kept.
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && ident(c[i - 1]);
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if !prev_ident && (c[i] == 'r' || (c[i] == 'b' && c.get(i + 1) == Some(&'r'))) && {
            let mut j = i + if c[i] == 'b' { 2 } else { 1 };
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            c.get(j) == Some(&'"')
        } {
            // Raw string: r"…", r#"…"#, br"…".
            i += if c[i] == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while c[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '"' && (0..hashes).all(|k| c.get(i + 1 + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                }
                i += 1;
            }
            i += 1;
        } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
            // Escaped char literal: '\n', '\'', '\u{..}'.
            i += 3;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            i += 3; // 'x' (a lifetime is 'a without the closing quote)
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let c: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_whitespace() {
            i += 1;
        } else if c[i].is_alphanumeric() || c[i] == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[s..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            out.push(c[i].to_string());
            i += 1;
        }
    }
    out
}

// ---- the module tree --------------------------------------------------------------------------

/// One reference: from the file `from` (inside test code or not) to the module path `to`
/// (absolute, from the crate root).
#[derive(Debug)]
struct Ref {
    from: String,
    test: bool,
    to: Vec<String>,
}

/// What the parser learns from one file.
#[derive(Default, Debug)]
struct FileFacts {
    /// Inline modules (absolute paths) declared in the file, with whether they are test code.
    inline: Vec<(Vec<String>, bool)>,
    /// `mod x;` declarations marked `#[cfg(test)]` (absolute paths of the file modules).
    test_files: Vec<Vec<String>>,
    refs: Vec<(bool, Vec<String>)>,
}

/// Expands a `use` tree (tokens after `use`, up to the `;`) into paths.
fn expand_use(t: &[String]) -> Vec<Vec<String>> {
    fn tree(t: &[String], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut path = prefix;
        while *i < t.len() {
            match t[*i].as_str() {
                "{" => {
                    *i += 1;
                    loop {
                        tree(t, i, path.clone(), out);
                        match t.get(*i).map(String::as_str) {
                            Some(",") => *i += 1,
                            Some("}") => {
                                *i += 1;
                                break;
                            }
                            _ => break,
                        }
                        if t.get(*i).map(String::as_str) == Some("}") {
                            *i += 1;
                            break;
                        }
                    }
                    return;
                }
                "::" => *i += 1,
                "," | "}" => break,
                "as" => *i += 2,
                "*" => *i += 1,
                s => {
                    path.push(s.to_string());
                    *i += 1;
                }
            }
        }
        out.push(path);
    }
    let mut out = Vec::new();
    let mut i = 0;
    // A leading `::` (`use ::std::…`) names an external crate.
    if t.first().map(String::as_str) == Some("::") {
        return out;
    }
    tree(t, &mut i, Vec::new(), &mut out);
    out
}

/// Parses one file whose module path is `module`; `children` tells whether a module path is
/// known (to resolve paths that start with a child module's name).
fn parse(code: &str, module: &[String], known: &BTreeSet<Vec<String>>) -> FileFacts {
    let t = tokens(&strip(code));
    let mut facts = FileFacts::default();
    // (module path, brace depth at which it closes, is test)
    let mut stack: Vec<(Vec<String>, usize, bool)> = vec![(module.to_vec(), 0, false)];
    let mut depth = 0usize;
    let mut cfg_test = false;
    let is_cfg_test = |i: usize| {
        t.len() > i + 6
            && t[i..i + 7]
                .iter()
                .map(String::as_str)
                .eq(["#", "[", "cfg", "(", "test", ")", "]"])
    };
    let mut i = 0;
    while i < t.len() {
        let (cur, _, in_test) = stack.last().cloned().expect("root");
        let tok = t[i].as_str();
        if is_cfg_test(i) {
            cfg_test = true;
            i += 7;
            continue;
        }
        match tok {
            "{" => {
                depth += 1;
                cfg_test = false;
                i += 1;
                continue;
            }
            "}" => {
                if stack.len() > 1 && stack.last().unwrap().1 == depth {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
                cfg_test = false;
                i += 1;
                continue;
            }
            ";" => {
                cfg_test = false;
                i += 1;
                continue;
            }
            "mod" if i + 2 < t.len() => {
                let name = t[i + 1].clone();
                let mut path = cur.clone();
                path.push(name);
                let test = in_test || cfg_test;
                if t[i + 2] == "{" {
                    depth += 1;
                    facts.inline.push((path.clone(), test));
                    stack.push((path, depth, test));
                    cfg_test = false;
                    i += 3;
                    continue;
                }
                if t[i + 2] == ";" && test {
                    facts.test_files.push(path);
                }
                i += 2;
                continue;
            }
            "use" => {
                let s = i + 1;
                let mut e = s;
                while e < t.len() && t[e] != ";" {
                    e += 1;
                }
                for p in expand_use(&t[s..e]) {
                    if let Some(abs) = resolve(&p, &cur, known) {
                        facts.refs.push((in_test, abs));
                    }
                }
                i = e;
                continue;
            }
            _ => {}
        }
        let starts_path = matches!(tok, "crate" | "super" | "self")
            || (tok
                .chars()
                .all(|c| c.is_lowercase() || c == '_' || c.is_ascii_digit())
                && known.contains(&[cur.clone(), vec![tok.to_string()]].concat()));
        let after_sep = i > 0 && t[i - 1] == "::";
        let macro_var = i > 0 && t[i - 1] == "$";
        let visibility = i > 0 && t[i - 1] == "in";
        if starts_path
            && !after_sep
            && !macro_var
            && !visibility
            && t.get(i + 1).map(String::as_str) == Some("::")
        {
            let mut p = vec![tok.to_string()];
            let mut j = i + 1;
            while j + 1 < t.len()
                && t[j] == "::"
                && t[j + 1].chars().all(|c| c.is_alphanumeric() || c == '_')
            {
                p.push(t[j + 1].clone());
                j += 2;
            }
            if let Some(abs) = resolve(&p, &cur, known) {
                facts.refs.push((in_test, abs));
            }
            i = j;
            continue;
        }
        i += 1;
    }
    facts
}

/// The absolute module path a path written in module `cur` starts with; None for paths into
/// other crates.
fn resolve(p: &[String], cur: &[String], known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut base: Vec<String> = cur.to_vec();
    let mut rest = p;
    match p.first()?.as_str() {
        "crate" => {
            base.clear();
            rest = &p[1..];
        }
        "super" | "self" => {
            while let Some(s) = rest.first() {
                match s.as_str() {
                    "super" => {
                        base.pop()?;
                    }
                    "self" => {}
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        first => {
            let mut child = cur.to_vec();
            child.push(first.to_string());
            if !known.contains(&child) {
                return None;
            }
        }
    }
    let mut abs = base;
    abs.extend(rest.iter().cloned());
    // The longest prefix that is a module.
    while !abs.is_empty() && !known.contains(&abs) {
        abs.pop();
    }
    Some(abs)
}

/// All `.rs` files under `dir`, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under src/ (`a/b.rs` and `a/b/mod.rs` are `a::b`); None for the
/// crate roots.
fn module_of(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    Some(parts)
}

/// Every reference in the crate under `src`, and the file (relative to `src`) of each module.
fn crate_refs(src: &Path) -> (Vec<Ref>, BTreeMap<Vec<String>, String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut file_of: BTreeMap<Vec<String>, String> = BTreeMap::new();
    let mut texts = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(src).expect("under src");
        let Some(m) = module_of(rel) else { continue };
        let name = rel.to_string_lossy().replace('\\', "/");
        file_of.insert(m.clone(), name.clone());
        texts.push((m, name, std::fs::read_to_string(f).expect("read source")));
    }
    // Inline modules are known before any path is resolved (a file may name a sibling's).
    let mut known: BTreeSet<Vec<String>> = file_of.keys().cloned().collect();
    let mut test_mods: BTreeSet<Vec<String>> = BTreeSet::new();
    for (m, name, text) in &texts {
        for (p, test) in parse(text, m, &known).inline {
            file_of.entry(p.clone()).or_insert_with(|| name.clone());
            if test {
                test_mods.insert(p.clone());
            }
            known.insert(p);
        }
    }
    let mut refs = Vec::new();
    let mut facts = Vec::new();
    for (m, name, text) in &texts {
        let f = parse(text, m, &known);
        test_mods.extend(f.test_files.iter().cloned());
        facts.push((m.clone(), name.clone(), f));
    }
    for (m, name, f) in facts {
        let file_is_test = (1..=m.len()).any(|n| test_mods.contains(&m[..n]));
        for (test, to) in f.refs {
            if to.is_empty() {
                continue; // the crate root
            }
            refs.push(Ref {
                from: name.clone(),
                test: test || file_is_test,
                to,
            });
        }
    }
    (refs, file_of)
}

// ---- graphs -----------------------------------------------------------------------------------

/// The strongly connected components with more than one node (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct St<'a> {
        e: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on: BTreeSet<String>,
        out: Vec<Vec<String>>,
    }
    fn visit(s: &mut St, v: &str) {
        let n = s.index.len();
        s.index.insert(v.into(), n);
        s.low.insert(v.into(), n);
        s.stack.push(v.into());
        s.on.insert(v.into());
        for w in s.e.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let l = s.low[w].min(s.low[v]);
                s.low.insert(v.into(), l);
            } else if s.on.contains(w) {
                let l = s.index[w].min(s.low[v]);
                s.low.insert(v.into(), l);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().expect("on stack");
                s.on.remove(&w);
                let done = w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = St {
        e: edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    let nodes: BTreeSet<String> = edges
        .iter()
        .flat_map(|(a, b)| std::iter::once(a.clone()).chain(b.iter().cloned()))
        .collect();
    for v in &nodes {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// Everything wrong with the crate under `src`, one line each.
fn violations(src: &Path) -> Vec<String> {
    let (refs, file_of) = crate_refs(src);
    let mut bad = BTreeSet::new();
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &refs {
        let from_top =
            layer_of(r.from.split('/').next().unwrap().trim_end_matches(".rs")).to_string();
        let to_top = layer_of(&r.to[0]).to_string();
        for m in [&from_top, &to_top] {
            if rank(m).is_none() && !FRONT_DOORS.contains(&m.as_str()) {
                bad.insert(format!(
                    "src/{}: top-level module `{m}` is in neither LAYERS nor FRONT_DOORS \
                     (tests/layers.rs): give it its place",
                    r.from
                ));
            }
        }
        if from_top != to_top {
            if let (Some(a), Some(b)) = (rank(&from_top), rank(&to_top)) {
                if b > a {
                    bad.insert(format!(
                        "src/{}: uses crate::{} (`{to_top}` is a higher layer than `{from_top}`)",
                        r.from,
                        r.to.join("::")
                    ));
                }
            }
            if rank(&from_top).is_some() && FRONT_DOORS.contains(&to_top.as_str()) {
                bad.insert(format!(
                    "src/{}: uses crate::{} (a front door; layers must not use it)",
                    r.from,
                    r.to.join("::")
                ));
            }
            if !r.test {
                top.entry(from_top.clone())
                    .or_default()
                    .insert(to_top.clone());
            }
        }
        let to_file = &file_of[&r.to];
        if !r.test && to_file != &r.from {
            files
                .entry(r.from.clone())
                .or_default()
                .insert(to_file.clone());
        }
    }
    for c in circles(&top) {
        bad.insert(format!(
            "import circle between top-level modules: {}",
            c.join(", ")
        ));
    }
    let folders = ACYCLIC_FOLDERS
        .iter()
        .map(|f| vec![*f])
        .chain(GROUPS.iter().map(|(_, members)| members.to_vec()));
    for group in folders {
        let inside = |f: &str| group.iter().any(|g| f.starts_with(&format!("{g}/")));
        let within: BTreeMap<String, BTreeSet<String>> = files
            .iter()
            .filter(|(a, _)| inside(a))
            .map(|(a, b)| (a.clone(), b.iter().filter(|f| inside(f)).cloned().collect()))
            .collect();
        let names: Vec<String> = group.iter().map(|g| format!("src/{g}/")).collect();
        for c in circles(&within) {
            bad.insert(format!(
                "import circle in {}: {}",
                names.join(" + "),
                c.join(", ")
            ));
        }
    }
    bad.into_iter().collect()
}

#[test]
fn layers_are_respected_and_imports_have_no_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "{} layering problem(s) in {}:\n{}",
        bad.len(),
        src.display(),
        bad.join("\n")
    );
}

// ---- the parser on small inputs ---------------------------------------------------------------

fn known(paths: &[&str]) -> BTreeSet<Vec<String>> {
    paths
        .iter()
        .map(|p| {
            p.split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

fn refs_of(code: &str, module: &str, k: &BTreeSet<Vec<String>>) -> Vec<(bool, String)> {
    let m: Vec<String> = module.split("::").map(String::from).collect();
    parse(code, &m, k)
        .refs
        .into_iter()
        .map(|(t, p)| (t, p.join("::")))
        .collect()
}

#[test]
fn the_parser_resolves_use_trees_super_and_inline_test_modules() {
    let k = known(&["a", "a::b", "a::c", "a::c::d", "x", "x::tests"]);
    let code = r##"
        //! crate::x::in_a_comment
        use crate::a::{b::Thing, c::{d, Other as O}};
        use super::*;
        use std::collections::HashMap;
        fn f() -> &'static str { let _ = 'x'; let _ = '\''; "crate::x::in_a_string" }
        fn g<'a>(s: &'a str) { crate::a::c::d::call(); let r = r#"super::b"#; }
        pub(in crate::a) fn h() {}
        #[cfg(test)]
        mod tests {
            use super::*;
            fn t() { super::super::b::helper(); }
        }
        fn after() { self::tests::t(); }
    "##;
    let got = refs_of(code, "a::c", &k);
    let want: Vec<(bool, String)> = vec![
        (false, "a::b".into()),
        (false, "a::c::d".into()),
        (false, "a::c".into()),
        (false, "a".into()),
        (false, "a::c::d".into()),
        (true, "a::c".into()),
        (true, "a::b".into()),
        (false, "a::c".into()),
    ];
    assert_eq!(got, want);
}

#[test]
fn the_checker_finds_layer_breaks_and_circles() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("ecad-layers-{}-{nanos}", std::process::id()));
    let s = dir.as_path();
    let w = |p: &str, text: &str| {
        let f = s.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    };
    w(
        "lib.rs",
        "pub mod backend; pub mod engine; pub mod families; pub mod models; pub mod pipeline;",
    );
    // engine/ and families/ are one layer: module-level use both ways is fine, a file circle
    // (engine/mod.rs -> families/mod.rs -> engine/mod.rs) is not; engine/api.rs is used by
    // families without closing a circle.
    w(
        "engine/mod.rs",
        "pub mod api; pub fn open() { crate::families::load(); }",
    );
    w("engine/api.rs", "pub struct Options;");
    w(
        "families/mod.rs",
        "use crate::engine::api::Options; pub fn load() { crate::engine::open(); }",
    );
    w(
        "backend/mod.rs",
        "pub fn op() { let _ = crate::models::f; }",
    );
    w("models/mod.rs", "pub fn f() { crate::backend::op(); }");
    w("pipeline/mod.rs", "pub mod a; pub mod b;");
    w("pipeline/a.rs", "use super::b::B; pub struct A;");
    w("pipeline/b.rs", "pub struct B; fn f(_: super::a::A) {}");
    let bad = violations(s);
    assert!(
        bad.iter()
            .any(|l| l.starts_with("src/backend/mod.rs: uses crate::models")),
        "{bad:?}"
    );
    assert!(
        bad.iter()
            .any(|l| l == "import circle between top-level modules: backend, models"),
        "{bad:?}"
    );
    assert!(
        bad.iter()
            .any(|l| l == "import circle in src/pipeline/: pipeline/a.rs, pipeline/b.rs"),
        "{bad:?}"
    );
    assert!(
        bad.iter()
            .any(|l| l
                == "import circle in src/engine/ + src/families/: engine/mod.rs, families/mod.rs"),
        "{bad:?}"
    );
    assert_eq!(bad.len(), 4, "{bad:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
