//! Walk-throughs in the documentation, run as a new user runs them, so they cannot rot.
//!
//! In a Markdown file, `<!-- walkthrough: NAME -->` starts a walk-through and
//! `<!-- walkthrough end -->` ends it; every ```` ```sh ```` block between the two belongs to it,
//! and a `sh` block anywhere else is an error (unless `<!-- not run: REASON -->` comes just
//! before it). Each line of a block is a command (a trailing `\` continues it), run in order in
//! one bash from the root of a fresh copy of the repository; a command that ends with `&` runs
//! in the background. The lines `#   TEXT` right after a command say what its output (standard
//! output and error together) shows: each must be found in one line of it, where `[..]`
//! stands for any text. A command must exit 0, unless one of its lines is `#   [fails]`.

use std::path::{Path, PathBuf};

/// One command of a walk-through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Where it is written: `file:line`.
    pub at: String,
    /// The command as written (continuations joined with newlines).
    pub command: String,
    /// It ends with `&`.
    pub background: bool,
    /// Lines its output must show.
    pub expected: Vec<String>,
    /// It must exit with a status other than 0.
    pub fails: bool,
}

/// A walk-through: its name and commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walkthrough {
    /// `file: NAME`.
    pub name: String,
    /// Its commands, in order.
    pub steps: Vec<Step>,
}

/// The marker that starts a walk-through.
const START: &str = "<!-- walkthrough: ";
/// The marker that ends one.
const END: &str = "<!-- walkthrough end -->";
/// The marker that exempts the next `sh` block.
const NOT_RUN: &str = "<!-- not run: ";
/// The prefix of an expected output line.
const EXPECTED: &str = "#   ";
/// The expected line that says the command fails.
const FAILS: &str = "[fails]";

/// The walk-throughs of the Markdown text `markdown` read from `file`.
///
/// # Errors
/// A `sh` block outside a walk-through, a walk-through that does not end, or expected output
/// before any command, each with its line.
pub fn extract(file: &str, markdown: &str) -> Result<Vec<Walkthrough>, String> {
    let mut walkthroughs = Vec::new();
    let mut current: Option<Walkthrough> = None;
    let mut exempt = false;
    let mut lines = markdown.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix(START) {
            if current.is_some() {
                return Err(format!(
                    "{file}:{}: a walk-through starts inside another",
                    index + 1
                ));
            }
            let name = rest.trim_end_matches("-->").trim();
            current = Some(Walkthrough {
                name: format!("{file}: {name}"),
                steps: Vec::new(),
            });
        } else if trimmed == END {
            let done = current.take().ok_or_else(|| {
                format!(
                    "{file}:{}: a walk-through ends that never started",
                    index + 1
                )
            })?;
            walkthroughs.push(done);
        } else if trimmed.starts_with(NOT_RUN) {
            exempt = true;
        } else if trimmed == "```sh" {
            let mut block = Vec::new();
            for (index, line) in lines.by_ref() {
                if line.trim() == "```" {
                    break;
                }
                block.push((index + 1, line));
            }
            if std::mem::take(&mut exempt) {
                continue;
            }
            let Some(walkthrough) = current.as_mut() else {
                return Err(format!(
                    "{file}:{}: a sh block outside a walk-through; put it inside `{START}NAME -->` and `{END}`, or mark it `{NOT_RUN}REASON -->`",
                    index + 1
                ));
            };
            walkthrough.steps.extend(steps(file, &block)?);
        } else if trimmed.starts_with("```") {
            // Another language: skip to its end, so its lines are not read as markers. An
            // exemption was for the block right after it, which this is.
            exempt = false;
            for (_, line) in lines.by_ref() {
                if line.trim() == "```" {
                    break;
                }
            }
        }
    }
    match current {
        Some(open) => Err(format!("{}: never ends; close it with `{END}`", open.name)),
        None => Ok(walkthroughs),
    }
}

/// The commands of one block of `(line number, line)`.
fn steps(file: &str, block: &[(usize, &str)]) -> Result<Vec<Step>, String> {
    let mut steps: Vec<Step> = Vec::new();
    let mut continued: Option<Step> = None;
    for (number, line) in block {
        if let Some(step) = continued.as_mut() {
            step.command.push('\n');
            step.command.push_str(line);
            if !line.ends_with('\\') {
                steps.extend(continued.take());
            }
            continue;
        }
        let trimmed = line.trim();
        if let Some(expected) = line.strip_prefix(EXPECTED) {
            let step = steps
                .last_mut()
                .ok_or_else(|| format!("{file}:{number}: expected output before any command"))?;
            let expected = expected.trim();
            if expected == FAILS {
                step.fails = true;
            } else {
                step.expected.push(expected.to_owned());
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let code = without_comment(line).trim_end();
        let step = Step {
            at: format!("{file}:{number}"),
            command: (*line).to_owned(),
            background: code.ends_with('&') && !code.ends_with("&&"),
            expected: Vec::new(),
            fails: false,
        };
        if line.ends_with('\\') {
            continued = Some(step);
        } else {
            steps.push(step);
        }
    }
    steps.extend(continued);
    Ok(steps)
}

/// `line` without a trailing shell comment (a `#` after whitespace, outside quotes).
fn without_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(open), c) if c == open => quote = None,
            (None, '#') if previous.is_whitespace() => return &line[..at],
            _ => {}
        }
        previous = c;
    }
    line
}

/// Whether `pattern` (with `[..]` for any text) is found in `line`.
pub fn line_matches(pattern: &str, line: &str) -> bool {
    let mut rest = line;
    for part in pattern.split("[..]").filter(|part| !part.is_empty()) {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The bash script that runs `walkthrough`, writing each command's output to `N.out` and its
/// exit status to `N.status` in `out`. Background commands are killed when the script ends.
pub fn script(walkthrough: &Walkthrough, out: &Path) -> String {
    let out = out.display();
    let mut script = String::from(
        "# Every background process of the walk-through ends with it.\ntrap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT\n",
    );
    for (n, step) in walkthrough.steps.iter().enumerate() {
        script.push_str(&format!("# {}\n", step.at));
        if step.background {
            let command = without_comment(&step.command).trim_end();
            let command = command.strip_suffix('&').unwrap_or(command);
            script.push_str(&format!("{command} > '{out}/{n}.out' 2>&1 &\n"));
        } else {
            script.push_str(&format!(
                "{{ {}\n}} > '{out}/{n}.out' 2>&1; echo $? > '{out}/{n}.status'\n",
                step.command
            ));
        }
    }
    script
}

/// Checks what the script of `walkthrough` left in `out`: every command ran, exited as it
/// should and showed what it should.
///
/// # Errors
/// The first command that did not, with its output.
pub fn check(walkthrough: &Walkthrough, out: &Path) -> Result<(), String> {
    for (n, step) in walkthrough.steps.iter().enumerate() {
        if step.background {
            continue;
        }
        let output = std::fs::read_to_string(out.join(format!("{n}.out"))).unwrap_or_default();
        let status: Option<i32> = std::fs::read_to_string(out.join(format!("{n}.status")))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let fail = |why: String| Err(format!("{}: {why}\n$ {}\n{output}", step.at, step.command));
        match status {
            None => return fail("never ran (an earlier command stopped the walk-through)".into()),
            Some(0) if step.fails => return fail("exited 0, but should fail".into()),
            Some(code) if code != 0 && !step.fails => return fail(format!("exited {code}")),
            _ => {}
        }
        for expected in &step.expected {
            if !output.lines().any(|line| line_matches(expected, line)) {
                return fail(format!("its output does not show {expected:?}"));
            }
        }
    }
    Ok(())
}

/// A fresh copy of the repository at `root` in `dest`, as a clone would have it: the files git
/// tracks or would track (nothing it ignores), with `target/` and `.venv/` linked in, so the
/// built module, the commands and Envoy are there as after `make setup` and `make build`.
///
/// # Errors
/// When git cannot list the files or a file cannot be copied.
pub fn fresh_copy(root: &Path, dest: &Path) -> anyhow::Result<()> {
    let listed = std::process::Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()?;
    anyhow::ensure!(listed.status.success(), "git ls-files failed");
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = PathBuf::from(String::from_utf8_lossy(name).into_owned());
        let from = root.join(&name);
        if !from.is_file() {
            continue;
        }
        let to = dest.join(&name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, &to)?;
    }
    for built in ["target", ".venv"] {
        std::os::unix::fs::symlink(root.join(built), dest.join(built))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walkthroughs_are_read_with_their_commands_and_expected_output() {
        let markdown = "\
intro
<!-- not run: needs a cluster -->
```sh
kubectl apply -f x
```
<!-- walkthrough: demo -->
```sh
a --flag   # a comment
#   shows [..] this
b 127.0.0.1:80 &   # background
c \\
  --more
#   [fails]
```
```yaml
<!-- walkthrough: not a marker -->
```
<!-- walkthrough end -->
";
        let walkthroughs = extract("README.md", markdown).unwrap();
        assert_eq!(walkthroughs.len(), 1);
        let steps = &walkthroughs[0].steps;
        assert_eq!(walkthroughs[0].name, "README.md: demo");
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0].at, "README.md:8");
        assert_eq!(steps[0].expected, ["shows [..] this"]);
        assert!(steps[1].background && !steps[0].background);
        assert_eq!(steps[2].command, "c \\\n  --more");
        assert!(steps[2].fails);
    }

    #[test]
    fn a_sh_block_outside_a_walkthrough_is_an_error() {
        let err = extract("doc.md", "text\n```sh\nweft check x\n```\n").unwrap_err();
        assert!(
            err.starts_with("doc.md:2: a sh block outside a walk-through"),
            "{err}"
        );
        // An exemption covers the next block only.
        let err = extract(
            "doc.md",
            "<!-- not run: x -->\n```yaml\na: 1\n```\n```sh\nweft check x\n```\n",
        )
        .unwrap_err();
        assert!(err.starts_with("doc.md:5: a sh block outside"), "{err}");
        assert!(extract("doc.md", "<!-- walkthrough: x -->\n").is_err());
    }

    #[test]
    fn expected_lines_match_with_wildcards_within_one_line() {
        assert!(line_matches("HTTP/2 403", "HTTP/2 403 "));
        assert!(line_matches(
            "[..] upstream checkout-v1: GET /",
            "     89 upstream checkout-v1: GET /"
        ));
        assert!(line_matches(
            "a=\"x\"[..]b=\"y\"} [..]",
            "m{a=\"x\",c=1,b=\"y\"} 11"
        ));
        assert!(!line_matches("a[..]b", "b then a"));
        assert!(!line_matches("403", "200"));
    }
}
