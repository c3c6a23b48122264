//! The layout's rules, checked on the source: within each crate, modules depend on each other
//! in one direction only (no module reaches, through others, back to itself), so that each can
//! be read, tested and replaced from the bottom up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every crate of the workspace that has a `src` folder.
fn crates() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find(|line| line.starts_with("members"))
        .expect("the workspace lists its members");
    members
        .split('"')
        .skip(1)
        .step_by(2)
        .map(|member| root.join(member))
        .filter(|dir| dir.join("src").is_dir())
        .collect()
}

/// The crate's top-level modules (a file, or a folder with `mod.rs`), by name: the modules
/// each names through `crate::` outside comments.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_some_and(|ext| ext == "rs")
            && !matches!(name.as_str(), "lib" | "main")
        {
            files.entry(name).or_insert_with(Vec::new).push(path);
        } else if path.is_dir() && path.join("mod.rs").is_file() {
            let nested = walk(&path);
            files.entry(name).or_insert_with(Vec::new).extend(nested);
        }
    }
    // Modules only tests compile (`#[cfg(test)] mod testing;`) are fixtures: they may reach
    // anything, as tests do.
    let root = ["lib.rs", "main.rs"]
        .iter()
        .find_map(|name| std::fs::read_to_string(src.join(name)).ok())
        .unwrap_or_default();
    let lines: Vec<&str> = root.lines().map(str::trim).collect();
    for pair in lines.windows(2) {
        if pair[0] == "#[cfg(test)]"
            && let Some(name) = pair[1]
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
        {
            files.remove(name);
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    files
        .into_iter()
        .map(|(name, paths)| {
            let mut uses = BTreeSet::new();
            for path in paths {
                let text = std::fs::read_to_string(&path).unwrap();
                // A module's unit tests come last, behind `#[cfg(test)]`: not the module's
                // dependencies.
                for line in text
                    .lines()
                    .take_while(|line| line.trim() != "#[cfg(test)]")
                {
                    let code = line.split("//").next().unwrap_or_default();
                    for (at, _) in code.match_indices("crate::") {
                        let rest = &code[at + "crate::".len()..];
                        let named: String = rest
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if named != name && modules.contains(&named) {
                            uses.insert(named);
                        }
                        // `use crate::{a, b::c}`
                        if let Some(group) = rest.strip_prefix('{') {
                            for item in group.split([',', '}']) {
                                let named = item.trim().split("::").next().unwrap_or_default();
                                if named != name && modules.contains(named) {
                                    uses.insert(named.to_owned());
                                }
                            }
                        }
                    }
                }
            }
            (name, uses)
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
    found
}

/// A cycle of `graph`, as the modules along it, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_cycle_finder_finds_a_cycle_through_three_modules_and_none_in_a_chain() {
    let graph = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            graph
                .entry((*from).to_owned())
                .or_default()
                .insert((*to).to_owned());
        }
        graph
    };
    assert_eq!(
        cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])).map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_owned())
    );
    assert_eq!(cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
}

#[test]
fn no_module_imports_itself_back_through_others_in_any_crate() {
    let crates = crates();
    assert!(crates.len() >= 10, "{crates:?}");
    let mut cycles = Vec::new();
    for dir in crates {
        let graph = module_graph(&dir.join("src"));
        if let Some(cycle) = cycle(&graph) {
            cycles.push(format!("{}: {}", dir.display(), cycle.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}
