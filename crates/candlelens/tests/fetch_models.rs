//! `scripts/fetch-models` cleans up after a run that was killed hard: its scratch space lives
//! under the models folder, and the next run removes the folders of runs no longer alive.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_killed_runs_scratch_is_removed_by_the_next_run() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dest = std::env::temp_dir().join(format!("candlelens-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dest);
    // pid_max is at most 2^22 on Linux, so this run cannot be alive
    let dead = dest.join(".scratch/99999999");
    let alive = dest.join(format!(".scratch/{}", std::process::id()));
    for d in [&dead, &alive] {
        std::fs::create_dir_all(d.join("whl")).unwrap();
        std::fs::write(d.join("whl/big.whl"), vec![0u8; 4096]).unwrap();
    }
    let out = Command::new("bash")
        .arg(root.join("scripts/fetch-models"))
        .arg("no-such-model")
        .env("CANDLELENS_MODELS", &dest)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown model 'no-such-model'"), "{stderr}");
    assert!(!dead.exists(), "the dead run's scratch is still there");
    assert!(alive.exists(), "a live run's scratch was removed");
    let leftovers: Vec<_> = std::fs::read_dir(dest.join(".scratch"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "this run left its own scratch: {leftovers:?}"
    );
    let _ = std::fs::remove_dir_all(&dest);
}
