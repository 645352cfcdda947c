//! `cargo xtask lint`: formatting, clippy with warnings as errors (the eBPF crate included), and the layering of `tracer-user/src`: which folder may import which, no cycle between modules, clap only where the command line is parsed.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Each top-level module of `tracer-user/src` and the others it may import
/// (itself always). Imports flow one way: the commands (`main`, `cli`,
/// `settings`, `cmd`) over `session`, over the kernel side (`bpf`) and the
/// host's other interfaces (`host`), over the pure `model`; `output`
/// formats the model. `testutil` is unit-test fixtures, open to all tests.
const LAYERS: &[(&str, &[&str])] = &[
    ("main", &["cli", "settings", "cmd", "error"]),
    ("lib", &["model", "bpf"]),
    (
        "cli",
        &["settings", "error", "session", "bpf", "model", "output"],
    ),
    ("settings", &["error", "session", "bpf", "model", "output"]),
    (
        "cmd",
        &[
            "settings", "error", "session", "bpf", "host", "model", "output",
        ],
    ),
    ("session", &["bpf", "host", "model"]),
    ("bpf", &["model"]),
    ("host", &["model"]),
    ("output", &["model"]),
    ("model", &[]),
    ("error", &[]),
    ("testutil", &["model"]),
];

/// The only files that may name clap: the parser (`cli/`) and the entry
/// point (which maps clap's error kinds to exit codes).
const CLAP_ALLOWED: &[&str] = &["cli/", "main.rs"];

pub fn run(root: &Path, toolchain: &str, ebpf: &dyn Fn(&mut Command)) -> Result<()> {
    step(
        "rustfmt",
        Command::new(cargo()).args(["fmt", "--all", "--check"]),
        root,
    )?;
    step(
        "clippy",
        Command::new(cargo()).args([
            "clippy",
            "--package",
            "tracer-common",
            "--package",
            "tracer-user",
            "--package",
            "xtask",
            "--all-targets",
            "--",
            "--deny",
            "warnings",
        ]),
        root,
    )?;
    let mut kernel = Command::new("rustup");
    kernel.args([
        "run",
        toolchain,
        "cargo",
        "clippy",
        "--package",
        "tracer-ebpf",
    ]);
    ebpf(&mut kernel);
    kernel.args(["--", "--deny", "warnings"]);
    step("clippy (eBPF crate)", &mut kernel, root)?;
    let problems = layering(&root.join("tracer-user/src"))?;
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("layering: {p}");
        }
        bail!("{} layering problems in tracer-user/src", problems.len());
    }
    println!("lint: rustfmt, clippy and layering clean");
    Ok(())
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn step(name: &str, command: &mut Command, root: &Path) -> Result<()> {
    eprintln!("lint: {name}");
    let status = command
        .current_dir(root)
        .status()
        .with_context(|| format!("running {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// Every layering problem under `src`, one line each.
fn layering(src: &Path) -> Result<Vec<String>> {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .map(|(layer, deps)| (*layer, deps.iter().copied().collect()))
        .collect();
    let mut problems = Vec::new();
    // Module (its first two path segments) -> modules it imports.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let files = rust_files(src)?;
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(src).ok())
        .map(|rel| module_of(&rel.to_string_lossy()))
        .collect();
    for file in files {
        let rel = file
            .strip_prefix(src)
            .context("a file outside src")?
            .to_string_lossy()
            .into_owned();
        let module = module_of(&rel);
        let layer = module.split("::").next().unwrap_or_default().to_owned();
        let Some(deps) = allowed.get(layer.as_str()) else {
            problems.push(format!(
                "{rel}: module `{layer}` is in no layer (add it to LAYERS in xtask/src/lint.rs)"
            ));
            continue;
        };
        let text = fs::read_to_string(&file).with_context(|| format!("reading {rel}"))?;
        let stripped = strip_comments(&text);
        if !CLAP_ALLOWED.iter().any(|allowed| rel.starts_with(allowed))
            && (stripped.contains("clap::") || stripped.contains("use clap"))
        {
            problems.push(format!("{rel}: names clap; only {CLAP_ALLOWED:?} may"));
        }
        let code = without_inline_tests(&stripped);
        for path in module_paths(code, &file_module(&rel)) {
            let target = path[0].as_str();
            if target != layer && target != "testutil" && !deps.contains(target) {
                problems.push(format!(
                    "{rel}: imports crate::{} ({layer} may import {deps:?})",
                    path.join("::")
                ));
            }
            // `crate::cmd::Driver` is an item of `cmd`, not a module.
            let to = Some(path.join("::"))
                .filter(|p| modules.contains(p))
                .unwrap_or_else(|| path[0].clone());
            if target != "testutil" && to != module && !module.starts_with(&format!("{to}::")) {
                graph.entry(module.clone()).or_default().insert(to);
            }
        }
    }
    for cycle in cycles(&graph) {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    Ok(problems)
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `model/tracker/conn.rs` -> `model::tracker`; `cli.rs` -> `cli`. Two
/// segments: a layer and its module, the grain cycles are looked for at.
fn module_of(rel: &str) -> String {
    let path = rel.trim_end_matches(".rs").trim_end_matches("/mod");
    path.split('/').take(2).collect::<Vec<_>>().join("::")
}

/// `model/tracker/conn.rs` -> `[model, tracker, conn]`; `output/mod.rs` ->
/// `[output]`: the module a file is, which `super::` is read from.
fn file_module(rel: &str) -> Vec<String> {
    let path = rel.trim_end_matches(".rs").trim_end_matches("/mod");
    path.split('/').map(str::to_owned).collect()
}

/// The code before an inline `#[cfg(test)] mod tests {`: in there
/// `super::` names the file's own module, and tests import what they like.
fn without_inline_tests(code: &str) -> &str {
    let mut from = 0;
    while let Some(i) = code[from..].find("#[cfg(test)]") {
        let at = from + i;
        let rest = code[at + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod ") && rest.split('\n').next().is_some_and(|l| l.contains('{')) {
            return &code[..at];
        }
        from = at + 1;
    }
    code
}

/// The code without `//` comments (doc comments name paths in prose).
/// String literals holding `//` are cut short too; none names a module.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path named as `crate::a::b` or inside `crate::{a::{b, c}, d}`,
/// or through `super::` from the file's module `here`, as its segments (at
/// most two: the layer and the module).
fn module_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for rest in after_each(code, "crate::") {
        tree(rest, &mut Vec::new(), &mut out);
    }
    for mut rest in after_each(code, "super::") {
        // `super::super::x` climbs once per `super`.
        let mut base = here.to_vec();
        base.pop();
        while let Some(next) = rest.strip_prefix("super::") {
            base.pop();
            rest = next;
        }
        base.truncate(2);
        if base.len() < 2 {
            tree(rest, &mut base, &mut out);
        } else {
            out.push(base);
        }
    }
    out
}

/// The text after each `word` that starts a path (not the tail of a
/// longer name, nor a later segment: `super::super::` is found once).
fn after_each<'a>(code: &'a str, word: &str) -> Vec<&'a str> {
    code.match_indices(word)
        .filter(|&(i, _)| {
            !code[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        })
        .map(|(i, _)| &code[i + word.len()..])
        .collect()
}

/// Reads one use-tree at the start of `text` under `prefix`.
fn tree(text: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        for item in split_group(group) {
            tree(item, &mut prefix.clone(), out);
        }
        return;
    }
    let ident: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() || ident == "self" {
        if !prefix.is_empty() {
            out.push(prefix.clone());
        }
        return;
    }
    prefix.push(ident.clone());
    let after = &text[ident.len()..];
    match after.strip_prefix("::") {
        Some(next) if prefix.len() < 2 => tree(next, prefix, out),
        _ => out.push(prefix.clone()),
    }
}

/// The items of a `{...}` group whose opening brace is already consumed.
fn split_group(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&text[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

/// Every cycle of the graph, as one strongly connected component each
/// (Tarjan's algorithm), in a stable order.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        if let Some(next) = s.graph.get(v) {
            for w in next {
                if !s.index.contains_key(w.as_str()) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w.as_str()]);
                    s.low.insert(v, low);
                } else if s.stack.contains(&w.as_str()) {
                    let low = s.low[v].min(s.index[w.as_str()]);
                    s.low.insert(v, low);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(code: &str) -> Vec<String> {
        paths_from(code, "session/mod.rs")
    }

    fn paths_from(code: &str, rel: &str) -> Vec<String> {
        module_paths(code, &file_module(rel))
            .iter()
            .map(|p| p.join("::"))
            .collect()
    }

    #[test]
    fn reads_plain_grouped_and_nested_imports() {
        assert_eq!(paths("use crate::model::event::Owner;"), ["model::event"]);
        assert_eq!(
            paths(
                "use crate::{\n    cmd::{Driver, Wake},\n    model::aggregate::{A, B},\n    settings,\n};"
            ),
            ["cmd::Driver", "cmd::Wake", "model::aggregate", "settings"]
        );
        assert_eq!(paths("let x = crate::testutil::id(1);"), ["testutil::id"]);
        assert_eq!(paths("use tracer_crate::x;"), Vec::<String>::new());
    }

    #[test]
    fn reads_paths_through_super() {
        assert_eq!(
            paths_from("use super::report::{A, B};", "output/html.rs"),
            ["output::report"]
        );
        assert_eq!(
            paths_from("super::EDGES", "output/report.rs"),
            ["output::EDGES"]
        );
        assert_eq!(
            paths_from("use super::super::aggregate::S;", "model/tracker/conn.rs"),
            ["model::aggregate"]
        );
        assert_eq!(
            paths_from(
                "use super::{conn::Conn, types::T};",
                "model/tracker/table.rs"
            ),
            ["model::tracker"]
        );
        assert_eq!(
            paths_from("use super::cmd::x;", "session/mod.rs"),
            ["cmd::x"]
        );
    }

    #[test]
    fn inline_tests_are_left_out() {
        let code = "use a;\n#[cfg(test)]\npub fn f() {}\n#[cfg(test)]\nmod tests {\n    use super::super::x;\n}\n";
        assert_eq!(
            without_inline_tests(code),
            "use a;\n#[cfg(test)]\npub fn f() {}\n"
        );
    }

    #[test]
    fn modules_are_a_layer_and_its_module() {
        assert_eq!(module_of("model/tracker/conn.rs"), "model::tracker");
        assert_eq!(module_of("model/tracker/mod.rs"), "model::tracker");
        assert_eq!(module_of("session/mod.rs"), "session");
        assert_eq!(module_of("cli.rs"), "cli");
    }

    #[test]
    fn finds_cycles_and_only_cycles() {
        let graph: BTreeMap<String, BTreeSet<String>> = [
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a"]),
            ("d", vec!["a"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
        .collect();
        assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
    }

    #[test]
    fn comments_do_not_count() {
        assert_eq!(
            strip_comments("a // crate::cmd\n/// crate::x\nb"),
            "a \n\nb"
        );
    }

    #[test]
    fn a_tree_that_breaks_the_rules_is_caught() {
        let src = std::env::temp_dir().join(format!("tcplinger-lint-{}", std::process::id()));
        let write = |rel: &str, text: &str| {
            let path = src.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        write("model/mod.rs", "pub mod a;\npub mod b;\n");
        write(
            "model/a.rs",
            "use crate::model::b::B;\nuse crate::host::x;\n",
        );
        write(
            "model/b.rs",
            "// crate::cmd in a comment is fine\nuse crate::model::a::A;\n",
        );
        write("output/mod.rs", "pub mod c;\npub mod d;\n");
        write("output/c.rs", "use super::d::D;\n");
        write(
            "output/d.rs",
            "use super::c::C;\n#[cfg(test)]\nmod tests {\n    use crate::cmd::x;\n}\n",
        );
        write(
            "cmd/mod.rs",
            "use clap::Parser;\nuse crate::{model::a, session::S};\n",
        );
        write("host/mod.rs", "");
        write("session/mod.rs", "");
        write("gadgets.rs", "");
        let problems = layering(&src).unwrap();
        fs::remove_dir_all(&src).unwrap();
        let expected = [
            "gadgets.rs: module `gadgets` is in no layer",
            "model/a.rs: imports crate::host",
            "cmd/mod.rs: names clap",
            "import cycle: model::a -> model::b",
            "import cycle: output::c -> output::d",
        ];
        for e in expected {
            assert!(
                problems.iter().any(|p| p.starts_with(e)),
                "{e:?} not in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    }

    #[test]
    fn this_tree_keeps_the_rules() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer-user/src");
        let problems = layering(&src).unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
