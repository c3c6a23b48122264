//! Every walk-through in README.md and docs/ runs as a new user runs it: in a fresh copy of the
//! repository (what git tracks, with the built `target/` and `.venv/`), command by command in
//! one bash, each exiting as it should and showing what the document says it shows (see
//! `weft_e2e::walkthrough`). A document that drifts from what weft does fails here.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use weft_e2e::paths;
use weft_e2e::walkthrough::{self, Walkthrough};

/// The longest one walk-through may take (Envoy starts in a second or two; each waits for it).
const DEADLINE: Duration = Duration::from_secs(180);

/// README.md and every page of docs/, in a stable order.
fn documents() -> Vec<std::path::PathBuf> {
    let root = paths::workspace_root();
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    std::iter::once(root.join("README.md"))
        .chain(docs)
        .collect()
}

/// Runs `walkthrough` from `clone`; kills whatever it leaves running, even past the deadline.
fn run(walkthrough: &Walkthrough, clone: &std::path::Path) -> Result<(), String> {
    let out = tempfile::tempdir().unwrap();
    let script = out.path().join("walkthrough.sh");
    std::fs::write(&script, walkthrough::script(walkthrough, out.path())).unwrap();
    let mut command = std::process::Command::new("bash");
    command
        .arg(&script)
        .current_dir(clone)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so that everything it started can be killed at once.
        .process_group(0);
    let mut child = command.spawn().unwrap();
    let group = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let finished = finished.recv_timeout(DEADLINE);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
    if finished.is_err() {
        return Err(format!(
            "{} did not finish within {DEADLINE:?}",
            walkthrough.name
        ));
    }
    walkthrough::check(walkthrough, out.path())
}

#[test]
fn every_walkthrough_in_the_readme_and_docs_runs_as_written() {
    paths::envoy_binary().unwrap();
    paths::weft_wasm().unwrap();
    let root = paths::workspace_root();
    for command in ["weft", "weft-upstream"] {
        assert!(
            root.join("target/debug").join(command).exists(),
            "target/debug/{command} is missing: run `make build`"
        );
    }
    let mut walkthroughs = Vec::new();
    for document in documents() {
        let name = document.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&document).unwrap();
        walkthroughs.extend(walkthrough::extract(&name, &text).unwrap());
    }
    assert!(
        walkthroughs.len() >= 3,
        "the README's walk-throughs were not found: {walkthroughs:#?}"
    );
    let mut failures = Vec::new();
    for walkthrough in &walkthroughs {
        // Each walk-through starts from a fresh clone, as a new user's would.
        let clone = tempfile::tempdir().unwrap();
        walkthrough::fresh_copy(&root, clone.path()).unwrap();
        if let Err(failure) = run(walkthrough, clone.path()) {
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
