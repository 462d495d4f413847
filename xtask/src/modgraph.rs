//! The module graph of a crate's source, read from its `use` statements and
//! the `crate::`/`super::`/`self::` paths in its code, to hold the layering
//! ARCHITECTURE.md documents: no two top-level modules of the agent depend
//! on each other, and no files of the agent or the eBPF crate go round in a
//! circle. A module and its own descendants may refer to each other (a
//! parent re-exports, a child uses its parent's types): that is how Rust
//! modules are built, not a circle. Test files are left out.
//!
//! Text, not a parser: comments and string literals are blanked first, and
//! a path is followed to the deepest module file it names.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// A module, as the segments of its path from the crate root.
pub type ModPath = Vec<String>;

/// Every module file of the crate rooted at `src`, by module path.
pub fn module_files(src: &Path) -> Result<BTreeMap<ModPath, PathBuf>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![src.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap_or(&path);
            let mut segments: ModPath = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            let last = segments.pop().unwrap_or_default();
            let stem = last.trim_end_matches(".rs");
            if !matches!(stem, "mod" | "lib" | "main") || !segments.is_empty() && stem != "mod" {
                segments.push(stem.to_owned());
            }
            files.insert(segments, path);
        }
    }
    Ok(files)
}

/// Whether `file` holds tests only (`tests.rs`, `tests_*.rs`, `*_tests.rs`,
/// or under a `tests` directory).
fn is_test(module: &ModPath) -> bool {
    module.iter().any(|s| s == "tests" || s.starts_with("tests_") || s.ends_with("_tests"))
}

/// `text` with comments and string and char literals blanked (newlines
/// kept), so a path in a message or a comment is not a dependency.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |e| e + 2);
            out.extend(rest[..end].chars().filter(|&c| c == '\n'));
            i += end;
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|&c| c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            let end = rest[body..].find(&close).map_or(rest.len(), |e| body + e + close.len());
            out.extend(rest[..end].chars().filter(|&c| c == '\n'));
            i += end;
        } else if rest.starts_with('"') {
            let mut j = 1;
            let b = rest.as_bytes();
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            out.extend(rest[..end].chars().filter(|&c| c == '\n'));
            i += end;
        } else if rest.starts_with('\'') && rest.len() > 2 && (rest.as_bytes()[2] == b'\'' || rest.starts_with("'\\")) {
            let end = rest[1..].find('\'').map_or(rest.len(), |e| e + 2);
            i += end;
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The paths a `use` tree names, each as its segments (`a::{b, c::d}` gives
/// `a::b` and `a::c::d`).
fn expand_tree(tree: &str) -> Vec<Vec<String>> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    expand_into(&tree, &mut Vec::new(), &mut out);
    out
}

fn expand_into(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Some(brace) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).split("as").next().unwrap_or(tree);
        let mut full = prefix.clone();
        full.extend(path.split("::").filter(|s| !s.is_empty() && *s != "*" && *s != "self").map(str::to_owned));
        out.push(full);
        return;
    };
    let head: Vec<String> = tree[..brace].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let inner = &tree[brace + 1..tree.rfind('}').unwrap_or(tree.len())];
    let before = prefix.len();
    prefix.extend(head);
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand_into(&inner[start..i], prefix, out);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        expand_into(&inner[start..], prefix, out);
    }
    prefix.truncate(before);
}

/// Every path the code of `text` names that starts with `crate`, `super`
/// or `self`.
fn paths(text: &str) -> Vec<Vec<String>> {
    let code = code_only(text);
    let mut out = Vec::new();
    // `use` statements, whole trees.
    let mut rest = code.as_str();
    while let Some(at) = find_word(rest, "use") {
        let after = &rest[at + 3..];
        let end = after.find(';').unwrap_or(after.len());
        out.extend(expand_tree(&after[..end]));
        rest = &after[end..];
    }
    // Inline paths: `crate::a::b`, `super::x` outside `use`.
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = code[from..].find(start) {
            let at = from + found;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':') {
                continue;
            }
            let path: String =
                code[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
            out.push(path.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect());
        }
    }
    out
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(found) = text[from..].find(word) {
        let at = from + found;
        let before_ok = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let after = bytes.get(at + word.len()).copied().unwrap_or(b' ');
        if before_ok && after.is_ascii_whitespace() {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// The module a path names, resolved from `module` (the file's module),
/// followed to the deepest module file; `None` for paths outside the crate.
fn resolve(path: &[String], module: &ModPath, files: &BTreeMap<ModPath, PathBuf>) -> Option<ModPath> {
    let mut base: ModPath = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") | Some("self") => module.clone(),
        _ => return None,
    };
    let mut segments = path.iter().peekable();
    while let Some(segment) = segments.peek() {
        match segment.as_str() {
            "crate" | "self" => {}
            "super" => {
                base.pop();
            }
            _ => break,
        }
        segments.next();
    }
    let mut deepest = base.clone();
    let mut current = base;
    for segment in segments {
        current.push(segment.clone());
        if files.contains_key(&current) {
            deepest = current.clone();
        } else {
            break;
        }
    }
    Some(deepest)
}

/// File-to-file dependencies of the crate at `src` (test files left out),
/// each with the module it depends on.
pub fn edges(src: &Path) -> Result<BTreeMap<ModPath, BTreeSet<ModPath>>> {
    let files = module_files(src)?;
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (module, file) in &files {
        if is_test(module) {
            continue;
        }
        let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let entry = edges.entry(module.clone()).or_default();
        for path in paths(&text) {
            if let Some(target) = resolve(&path, module, &files) {
                if &target != module && !is_test(&target) && files.contains_key(&target) {
                    entry.insert(target);
                }
            }
        }
    }
    Ok(edges)
}

/// Pairs of top-level modules that depend on each other, with the files
/// that make each direction.
pub fn top_level_cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<String> {
    let top = |m: &ModPath| m.first().cloned().unwrap_or_default();
    let mut by_top: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in edges {
        for to in tos {
            let (a, b) = (top(from), top(to));
            if !a.is_empty() && !b.is_empty() && a != b {
                by_top.entry((a, b)).or_default().insert(from.join("/"));
            }
        }
    }
    by_top
        .iter()
        .filter(|((a, b), _)| a < b && by_top.contains_key(&(b.clone(), a.clone())))
        .map(|((a, b), files)| {
            let back = &by_top[&(b.clone(), a.clone())];
            format!(
                "{a} <-> {b} ({a} -> {b} in {}; {b} -> {a} in {})",
                files.iter().cloned().collect::<Vec<_>>().join(", "),
                back.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect()
}

/// Circles of files (strongly connected sets of more than one file), not
/// counting a module's references to and from its own descendants.
pub fn file_circles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<String>> {
    let related = |a: &ModPath, b: &ModPath| a.starts_with(b) || b.starts_with(a);
    let graph: BTreeMap<&ModPath, Vec<&ModPath>> =
        edges.iter().map(|(from, tos)| (from, tos.iter().filter(|to| !related(from, to)).collect())).collect();
    // Tarjan's strongly connected components.
    struct State<'a> {
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(node: &'a ModPath, graph: &BTreeMap<&'a ModPath, Vec<&'a ModPath>>, s: &mut State<'a>) {
        s.index.insert(node, s.next);
        s.low.insert(node, s.next);
        s.next += 1;
        s.stack.push(node);
        s.on_stack.insert(node);
        for &to in graph.get(node).into_iter().flatten() {
            if !s.index.contains_key(to) {
                visit(to, graph, s);
                let low = s.low[node].min(s.low[to]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(to) {
                let low = s.low[node].min(s.index[to]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = Vec::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.push(top.join("/"));
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node) {
            visit(node, &graph, &mut state);
        }
    }
    state.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crate_src(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name).join("src")
    }

    #[test]
    fn use_trees_expand_to_every_path() {
        let paths = expand_tree("crate::{a::{b, c::D}, e as f, g::*}");
        assert_eq!(
            paths,
            [vec!["crate", "a", "b"], vec!["crate", "a", "c", "D"], vec!["crate", "e"], vec!["crate", "g"]]
        );
        assert_eq!(code_only("a // crate::x\n\"crate::y\" /* crate::z */ b"), "a \n  b");
    }

    #[test]
    fn a_circle_is_found_and_a_parent_and_child_are_not_one() {
        let m = |s: &str| s.split('/').map(str::to_owned).collect::<ModPath>();
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        edges.entry(m("k/a")).or_default().insert(m("k/b"));
        edges.entry(m("k/b")).or_default().insert(m("k/a"));
        edges.entry(m("k")).or_default().insert(m("k/c"));
        edges.entry(m("k/c")).or_default().insert(m("k"));
        edges.entry(m("x")).or_default().insert(m("k/a"));
        edges.entry(m("k/a")).or_default().insert(m("x"));
        assert_eq!(file_circles(&edges), [vec!["k/a".to_owned(), "k/b".to_owned(), "x".to_owned()]]);
        assert_eq!(top_level_cycles(&edges).len(), 1, "{:?}", top_level_cycles(&edges));
    }

    #[test]
    fn the_agents_top_level_modules_depend_one_way() {
        let edges = edges(&crate_src("agent")).expect("the agent's source");
        let cycles = top_level_cycles(&edges);
        assert!(cycles.is_empty(), "two-way dependencies between the agent's modules:\n{}", cycles.join("\n"));
    }

    #[test]
    fn no_files_of_the_agent_or_the_ebpf_programs_go_round_in_a_circle() {
        for name in ["agent", "ebpf"] {
            let circles = file_circles(&edges(&crate_src(name)).expect("the source"));
            let text: Vec<String> = circles.iter().map(|c| c.join(" -> ")).collect();
            assert!(circles.is_empty(), "{name}: files in a circle:\n{}", text.join("\n"));
        }
    }
}
