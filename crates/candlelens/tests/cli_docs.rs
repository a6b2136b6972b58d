//! The `lens` command lines of the book run as written on the embedded models: every line of
//! the `sh` blocks of `docs/src/cli.md`, `lre.md`, `steering.md`, `probes.md` and `datasets.md` that needs no placeholder (`...`,
//! a path of the reader's own, a hub model) or long benchmark, in a folder holding the
//! prompt files they read and the repository's `data/`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `lens` command lines of the `sh` blocks of a book page (continuations joined, comments
/// dropped).
fn command_lines(page: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("docs/src").join(page)).unwrap();
    let (mut out, mut in_sh, mut cur) = (Vec::new(), false, String::new());
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = strip_comment(line);
        let code = code.trim_end();
        match code.strip_suffix('\\') {
            Some(head) => cur.push_str(head),
            None => {
                cur.push_str(code);
                if cur.trim_start().starts_with("lens ") {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
            }
        }
    }
    out
}

/// The line without a trailing `# comment` (outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted && (i == 0 || line[..i].ends_with(' ')) => return &line[..i],
            _ => {}
        }
    }
    line
}

/// A command line split into arguments as the shell does for double quotes.
fn args(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn runnable(line: &str) -> bool {
    let embedded = line.contains("smollm2-135m") || line.contains("gemma-3-270m");
    let own_input = ["...", "path/to", "/path"].iter().any(|p| line.contains(p));
    (embedded || line == "lens models") && !own_input && !line.starts_with("lens bench")
}

#[test]
fn the_books_command_lines_run_as_written() {
    let dir = std::env::temp_dir().join(format!("candlelens-cli-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prompts.txt"),
        "The capital of France is\nOne, two, three,\n",
    )
    .unwrap();
    std::fs::write(dir.join("happy.txt"), "I love this\nWhat a joyful day\n").unwrap();
    std::fs::write(dir.join("sad.txt"), "I hate this\nWhat a miserable day\n").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(repo().join("data"), dir.join("data")).unwrap();
    let lines: Vec<String> = [
        "cli.md",
        "lre.md",
        "steering.md",
        "probes.md",
        "datasets.md",
    ]
    .iter()
    .flat_map(|p| command_lines(p))
    .filter(|l| runnable(l))
    .collect();
    assert!(lines.len() >= 8, "{lines:?}");
    for line in &lines {
        let a = args(line);
        let out = Command::new(env!("CARGO_BIN_EXE_lens"))
            .args(&a[1..])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`{line}` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_patch_runs_with_its_default_answers_on_both_embedded_models() {
    for model in ["smollm2-135m", "gemma-3-270m"] {
        let out = Command::new(env!("CARGO_BIN_EXE_lens"))
            .args([
                "bench", "patch", "--model", model, "--sample", "1", "--json",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{model}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let answers = v["answers"].as_array().unwrap();
        assert_eq!(answers[1], " Rachel", "{v}");
        assert!(v["clean_diff"].as_f64().unwrap().is_finite(), "{v}");
        assert!(v["speedup"].as_f64().unwrap() > 0.0, "{v}");
    }
}

#[test]
fn command_lines_are_split_as_the_shell_does() {
    assert_eq!(
        args(r#"lens run --prompt "1 2 3" --answers " is" " was""#),
        [
            "lens",
            "run",
            "--prompt",
            "1 2 3",
            "--answers",
            " is",
            " was"
        ]
    );
    assert_eq!(
        strip_comment("lens models   # all of them"),
        "lens models   "
    );
    assert_eq!(
        strip_comment(r#"lens x --t "a # b""#),
        r#"lens x --t "a # b""#
    );
}
