//! The dependency rules of `src/` (ARCHITECTURE.md, "Invariants"), checked on the source: every
//! module imports only modules of the layers below its own, never one of its own layer and
//! never one above; no module reaches the crate root's re-exports (`crate::Event`) instead of
//! the module that defines the item. So the import graph has no circle and no import runs back
//! up, and the sans-IO core (`src/core/`) imports nothing but the leaves under it.
//!
//! The check reads the files as text: every `crate::<module>` path outside comments, including
//! those inside `use crate::{...}` groups. A new module must be given a layer here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules of `src/`, bottom layer first. A module may import the modules of every
/// layer before its own, and nothing else of the crate.
const LAYERS: &[&[&str]] = &[
    // Leaves: depend on nothing of the crate.
    &["json", "event", "receipt", "ring", "park"],
    // The ring record (layout, encoding, user hash).
    &["record"],
    &["delivery"],
    // The sans-IO core: routing, batching, breakers, resume, the protocol state machines.
    &["core"],
    // The spool's file I/O (under the core's record format) and the counters' publication.
    &["spool", "metrics"],
    // The dashboard's page and its JSON (from the counters).
    &["dashboard"],
    // The Redis engine's side of Redis (its counters are shown by `metrics`).
    &["redis_engine"],
    &["error"],
    &["config"],
    // JWKS: reading and refreshing key sets (under the file bounds of `config`).
    &["jwks", "tls"],
    &["auth", "devsecret"],
    // The two sides of a ring, which do not know each other.
    &["emitter", "reactor"],
    &["ingest"],
    &["gateway"],
    // Users of the whole gateway.
    &["fuzz", "bench"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a file of `src/` belongs to (`src/core/tests.rs` -> `core`), or `None`
/// for the crate root and the binary.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib" && name != "main").then_some(name)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without `//` comments (doc comments included) and without the contents of string
/// literals, so neither a doc link nor a message names a module.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_str = false;
                    out.push('"');
                }
                '\n' => out.push('\n'),
                _ => {}
            }
            continue;
        }
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            // A char literal of a quote ('"') does not open a string.
            '\'' if chars.peek() == Some(&'"') => {
                out.push('\'');
                out.push(chars.next().expect("peeked"));
            }
            '"' => {
                in_str = true;
                out.push('"');
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every module of the crate named after `crate::` in `code`, with `use crate::{a, b::c}`
/// groups opened. A capitalised name (`crate::Event`) is a re-export of the root: `"<root>"`.
fn imported_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        // `floodgate_crate::` or `my_crate::` are other names.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(j, _)| j);
            let mut level = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain([',']) {
                match c {
                    '{' => level += 1,
                    '}' => level -= 1,
                    ',' if level == 0 => {
                        add(&mut found, item.trim());
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            add(&mut found, rest);
        }
    }
    found
}

fn add(found: &mut BTreeSet<String>, path: &str) {
    let name: String = path
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if name.is_empty() || name == "self" {
        return;
    }
    if name.starts_with(|c: char| c.is_uppercase()) || name == "__bench" {
        found.insert("<root>".into());
    } else {
        found.insert(name);
    }
}

#[test]
fn every_module_imports_only_the_layers_below_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut broken = Vec::new();
    let mut seen_modules = BTreeSet::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        seen_modules.insert(module.clone());
        let Some(mine) = layer_of(&module) else {
            broken.push(format!(
                "{}: module `{module}` has no layer in LAYERS",
                file.display()
            ));
            continue;
        };
        let code = code_only(&std::fs::read_to_string(file).expect("read"));
        for used in imported_modules(&code) {
            if used == module {
                continue;
            }
            let ok = layer_of(&used).is_some_and(|theirs| theirs < mine);
            if !ok {
                broken.push(format!(
                    "{}: `{module}` (layer {mine}) imports `{used}` ({})",
                    file.display(),
                    match layer_of(&used) {
                        Some(l) if l == mine => format!("the same layer {l}"),
                        Some(l) => format!("layer {l}, above it"),
                        None if used == "<root>" =>
                            "the crate root's re-exports: name the defining module".into(),
                        None => "no layer".into(),
                    }
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports that break the layers:\n{}",
        broken.join("\n")
    );
    // Every module with a layer exists (a renamed module must be renamed here too).
    for module in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            seen_modules.contains(*module),
            "LAYERS names `{module}`, which is not a module of src/"
        );
    }
}

#[test]
fn the_checker_sees_every_form_of_import() {
    let code = code_only(
        "use crate::config::Config;\n\
         use crate::{gateway::Shared, metrics::{Registry, Stats}, self};\n\
         let x = crate::spool::open(); // crate::ingest in a comment\n\
         let s = \"crate::reactor in a string\";\n\
         let e = crate::Event::custom(\"t\", &());\n\
         let c = '\"'; let y = crate::auth::mint();\n\
         /// [`crate::bench`] in a doc comment\n\
         my_crate::ring::x();",
    );
    let found: Vec<String> = imported_modules(&code).into_iter().collect();
    assert_eq!(
        found,
        ["<root>", "auth", "config", "gateway", "metrics", "spool"]
    );
}
