//! The architecture check: every module ARCHITECTURE.md's "Pure modules" list names must be
//! pure. Its source (the module's file and its submodules, test code excepted) is parsed with
//! syn and every path it names (`use` trees, types, calls, macros) is checked against what does
//! I/O: runtimes and servers, databases and caches, clients, the file system, sockets,
//! processes, threads, the environment and clock reads (pure code takes time passed in).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use syn::visit::Visit;

/// The heading of the list in ARCHITECTURE.md.
const SECTION: &str = "### Pure modules";

/// Path prefixes a pure module must not name, each with what it is.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "the async runtime"),
    ("pingora", "the proxy server"),
    ("sqlx", "the database"),
    ("redis", "the cache server"),
    ("moka", "the in-process cache"),
    ("hyper", "HTTP I/O"),
    ("hyper_util", "HTTP I/O"),
    ("reqwest", "an HTTP client"),
    ("hickory_resolver", "DNS lookups"),
    ("hickory_server", "a DNS server"),
    ("opentelemetry_otlp", "span export"),
    ("tonic::transport", "gRPC connections"),
    ("tonic::Request", "gRPC calls"),
    ("tonic::Response", "gRPC calls"),
    ("tonic::server", "a gRPC server"),
    ("tonic::client", "a gRPC client"),
    ("tonic_health", "a gRPC service"),
    ("proxy_wasm", "the Wasm host ABI"),
    ("nix", "system calls"),
    ("std::fs", "the file system"),
    ("std::net::TcpStream", "sockets"),
    ("std::net::TcpListener", "sockets"),
    ("std::net::UdpSocket", "sockets"),
    ("std::process", "processes"),
    ("std::thread", "threads"),
    ("std::env", "the environment"),
    ("std::io::stdin", "standard streams"),
    ("std::io::stdout", "standard streams"),
    ("std::io::stderr", "standard streams"),
    ("Instant::now", "a clock read"),
    ("SystemTime::now", "a clock read"),
];

/// The modules the list names: `(source dir, module path)`, e.g. `("edge-gateway/src",
/// "proxy/classify")`.
pub fn pure_modules(architecture: &str) -> anyhow::Result<Vec<(String, String)>> {
    let Some(start) = architecture.find(SECTION) else {
        bail!("ARCHITECTURE.md has no \"{SECTION}\" section");
    };
    let section = &architecture[start + SECTION.len()..];
    let section = section.find("\n#").map_or(section, |end| &section[..end]);
    // One item per `- ` line, with its indented continuation lines.
    let mut items: Vec<String> = Vec::new();
    for line in section.lines() {
        if line.starts_with("- `") {
            items.push(line.to_owned());
        } else if let (Some(item), true) = (items.last_mut(), line.starts_with("  ")) {
            item.push(' ');
            item.push_str(line.trim());
        }
    }
    let mut modules = Vec::new();
    for line in &items {
        let mut quoted = line.split('`').skip(1).step_by(2);
        let Some(dir) = quoted.next() else { continue };
        let Some((_, list)) = line.split_once(':') else {
            bail!("ARCHITECTURE.md, {SECTION}: `{dir}` has no `: module, …` list");
        };
        for module in list.split('`').skip(1).step_by(2) {
            modules.push((dir.to_owned(), module.to_owned()));
        }
    }
    if modules.is_empty() {
        bail!("ARCHITECTURE.md, {SECTION}: no modules listed");
    }
    Ok(modules)
}

/// Every violation under `root`, one line each (empty: the map holds).
pub fn check(root: &Path) -> anyhow::Result<Vec<String>> {
    let architecture =
        std::fs::read_to_string(root.join("ARCHITECTURE.md")).context("reading ARCHITECTURE.md")?;
    let mut problems = Vec::new();
    for (dir, module) in pure_modules(&architecture)? {
        let files = module_files(&root.join(&dir), &module);
        if files.is_empty() {
            problems.push(format!(
                "{dir}: `{module}` is listed as pure but neither {module}.rs nor {module}/mod.rs exists"
            ));
        }
        for file in files {
            let source = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let shown = file
                .strip_prefix(root)
                .unwrap_or(&file)
                .display()
                .to_string();
            for (path, what) in impure_paths(&source).with_context(|| format!("parsing {shown}"))? {
                problems.push(format!(
                    "{shown}: `{path}` ({what}) in `{module}`, which ARCHITECTURE.md lists as pure"
                ));
            }
        }
    }
    Ok(problems)
}

/// `<module>.rs` or `<module>/mod.rs`, and the files of its directory's submodules (except
/// `tests.rs`, test code by convention).
fn module_files(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for candidate in [
        src.join(format!("{module}.rs")),
        src.join(module).join("mod.rs"),
    ] {
        if candidate.is_file() {
            files.push(candidate);
        }
    }
    if files.is_empty() {
        return files;
    }
    let mut pending = vec![src.join(module)];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("mod.rs")
                && !path.ends_with("tests.rs")
            {
                files.push(path);
            }
        }
    }
    files
}

/// The forbidden paths `source` names outside `#[cfg(test)]` items, with what each is.
pub fn impure_paths(source: &str) -> syn::Result<Vec<(String, &'static str)>> {
    let file = syn::parse_file(source)?;
    let mut collector = Paths::default();
    collector.visit_file(&file);
    let mut found = Vec::new();
    for path in collector.paths {
        if let Some((_, what)) = FORBIDDEN.iter().find(|(banned, _)| names(&path, banned)) {
            found.push((path, *what));
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// Whether `path` (`a::b::c`) is `banned` or inside it. A banned crate (`pingora`) covers its
/// family (`pingora_core`); a banned path starting with an upper-case segment (`Instant::now`)
/// may stand anywhere in the path (after its module).
fn names(path: &str, banned: &str) -> bool {
    let path = path.trim_start_matches("::");
    let within = |at: &str| at == banned || at.starts_with(&format!("{banned}::"));
    if within(path) {
        return true;
    }
    if !banned.contains("::") {
        let first = path.split("::").next().unwrap_or_default();
        return first.starts_with(&format!("{banned}_"));
    }
    banned.starts_with(char::is_uppercase)
        && path
            .match_indices("::")
            .any(|(at, _)| within(&path[at + 2..]))
}

/// Every path of a file as text: `use` trees expanded, then types, expressions and macros.
#[derive(Default)]
struct Paths {
    paths: Vec<String>,
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        (attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test")))
            || attr.path().is_ident("test")
    })
}

impl Paths {
    fn use_tree(&mut self, prefix: &str, tree: &syn::UseTree) {
        let join = |name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}::{name}")
            }
        };
        match tree {
            syn::UseTree::Path(path) => self.use_tree(&join(&path.ident.to_string()), &path.tree),
            syn::UseTree::Name(name) => self.paths.push(join(&name.ident.to_string())),
            syn::UseTree::Rename(rename) => self.paths.push(join(&rename.ident.to_string())),
            syn::UseTree::Glob(_) => self.paths.push(join("*")),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(item) => &item.attrs,
            syn::Item::Fn(item) => &item.attrs,
            syn::Item::Impl(item) => &item.attrs,
            syn::Item::Use(item) => &item.attrs,
            syn::Item::Struct(item) => &item.attrs,
            syn::Item::Enum(item) => &item.attrs,
            syn::Item::Const(item) => &item.attrs,
            syn::Item::Static(item) => &item.attrs,
            syn::Item::Trait(item) => &item.attrs,
            syn::Item::Macro(item) => &item.attrs,
            _ => &Vec::new(),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree("", &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let text: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.paths.push(text.join("::"));
        syn::visit::visit_path(self, path);
    }
}

/// `cargo xtask architecture`.
pub fn run(root: &Path) -> anyhow::Result<bool> {
    let problems = check(root)?;
    for problem in &problems {
        eprintln!("{problem}");
    }
    if problems.is_empty() {
        let count = pure_modules(&std::fs::read_to_string(root.join("ARCHITECTURE.md"))?)?.len();
        println!("architecture: the {count} modules ARCHITECTURE.md lists as pure are pure");
    }
    Ok(problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pure_modules_of_architecture_md_are_pure() {
        let problems = check(&crate::util::repo_root()).unwrap();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn imports_of_io_are_found_in_every_form() {
        let source = r#"
            use std::{collections::HashMap, fs};
            use tokio::sync::watch;
            use pingora_core::server::Server as S;
            use std::time::{Duration, Instant};
            fn f() -> Duration {
                let _ = std::env::var("X");
                let _ = redis::cmd("GET");
                let _ = std::net::TcpStream::connect("a");
                Instant::now().elapsed()
            }
            fn g() -> tonic::Code { tonic::Code::Ok }
            fn h(_: std::net::SocketAddr) {}
        "#;
        let found: Vec<String> = impure_paths(source)
            .unwrap()
            .into_iter()
            .map(|(path, _)| path)
            .collect();
        assert_eq!(
            found,
            [
                "Instant::now",
                "pingora_core::server::Server",
                "redis::cmd",
                "std::env::var",
                "std::fs",
                "std::net::TcpStream::connect",
                "tokio::sync::watch",
            ]
        );
    }

    #[test]
    fn test_code_is_not_checked() {
        let source = r#"
            pub fn pure(x: u8) -> u8 { x }
            #[cfg(test)]
            mod tests {
                use tokio::time::sleep;
                #[tokio::test]
                async fn t() { std::fs::read("x").unwrap(); }
            }
        "#;
        assert!(impure_paths(source).unwrap().is_empty());
    }

    #[test]
    fn the_list_is_read_from_its_section_only() {
        let doc = "# Map\n- `a/src`: `not_this`\n### Pure modules\nIntro.\n\n\
                   - `edge-gateway/src`: `routes`,\n  `proxy/classify`\n\
                   - `xtask/src`: `workload`\n\n## Invariants\n- `b/src`: `nor_this`\n";
        assert_eq!(
            pure_modules(doc).unwrap(),
            [
                ("edge-gateway/src".to_owned(), "routes".to_owned()),
                ("edge-gateway/src".to_owned(), "proxy/classify".to_owned()),
                ("xtask/src".to_owned(), "workload".to_owned()),
            ]
        );
        assert!(pure_modules("# Map\n").is_err());
    }

    #[test]
    fn a_listed_module_that_does_io_fails_the_check() {
        let root = crate::util::TempDir::new("architecture").unwrap();
        std::fs::create_dir_all(root.path().join("c/src/m")).unwrap();
        std::fs::write(
            root.path().join("ARCHITECTURE.md"),
            "### Pure modules\n- `c/src`: `m`, `gone`\n",
        )
        .unwrap();
        std::fs::write(root.path().join("c/src/m.rs"), "pub mod inner;\n").unwrap();
        std::fs::write(
            root.path().join("c/src/m/inner.rs"),
            "pub fn read() { let _ = std::fs::read(\"x\"); }\n",
        )
        .unwrap();
        let problems = check(root.path()).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("`gone` is listed as pure but"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("c/src/m/inner.rs: `std::fs::read` (the file system)"))
        );
    }
}
