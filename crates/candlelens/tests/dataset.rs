//! Activation datasets on disk: the rows equal the in-memory store's for the same contexts;
//! `--shard i/n` processes together write the single run's files byte for byte; a killed run
//! resumes without rewriting a complete shard; another dataset's folder, a damaged shard and an
//! incomplete dataset are typed errors.

mod common;

use candlelens::dataset::{store_activations, ActivationDataset, StoreOptions};
use candlelens::prelude::*;
use candlelens::util::corpus::Corpus;
use common::*;

fn corpus() -> Corpus {
    let texts: Vec<String> = (0..12)
        .map(|i| format!("The pet of family {i} is a cat. Is Paris the capital of France? Mary and John went to the store {i} times."))
        .collect();
    Corpus::from_texts("test texts", &texts).unwrap()
}

fn opts() -> StoreOptions {
    StoreOptions {
        context_size: 8,
        batch_size: 3,
        contexts_per_shard: 4,
        progress: false,
        ..Default::default()
    }
}

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("candlelens-dataset-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for hook in std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
    {
        for f in std::fs::read_dir(hook.path()).unwrap().flatten() {
            out.push((
                format!(
                    "{}/{}",
                    hook.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                ),
                std::fs::read(f.path()).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn a_stored_dataset_reads_back_as_the_in_memory_store() {
    let m = tiny("llama");
    let c = corpus();
    let hooks = [
        HookPoint::parse("blocks.1.hook_resid_pre").unwrap(),
        HookPoint::parse("blocks.0.hook_mlp_out").unwrap(),
    ];
    let dir = tmp("one");
    let r = store_activations(&m, &c, &hooks, &dir, &opts()).unwrap();
    assert!(r.complete && r.files_kept == 0, "{r:?}");
    let ds = ActivationDataset::open(&dir).unwrap();
    ds.verify().unwrap();
    let plan = &ds.manifest().plan;
    assert!(plan.n_shards >= 3, "{plan:?}");
    let contexts = c.contexts(&m, 8, usize::MAX).unwrap();
    assert_eq!(plan.n_contexts, contexts.batch());
    for hp in hooks {
        let store = m.collect_activations(&contexts, hp, 3).unwrap();
        let all = ds.activations(&hp.to_string()).unwrap();
        assert_eq!(all.dims(), store.acts.dims());
        assert!(max_abs(&to_vec(&all), &to_vec(&store.acts)) < 1e-5);
        let mut index = Vec::new();
        let mut ids = Vec::new();
        for s in ds.shards(&hp.to_string()) {
            let s = s.unwrap();
            index.extend(
                s.context_index
                    .iter()
                    .zip(&s.position)
                    .map(|(&c, &p)| (c as usize, p as usize)),
            );
            ids.extend(s.token_ids);
        }
        assert_eq!(index, store.index);
        let want: Vec<u32> = store
            .index
            .iter()
            .map(|&(c, p)| contexts.rows()[c][p])
            .collect();
        assert_eq!(ids, want);
    }
    // as an in-memory store for the views: the same rows; other contexts are refused
    let hp = hooks[0];
    let back = ds.to_store(&hp.to_string(), &contexts).unwrap();
    let store = m.collect_activations(&contexts, hp, 3).unwrap();
    assert_eq!(back.index, store.index);
    let fewer = Tokens::new(contexts.rows()[1..].to_vec(), 0).unwrap();
    assert!(ds.to_store(&hp.to_string(), &fewer).is_err());
    // resume: a lost shard (and the manifest) is written again, nothing else is
    let before = files(&dir);
    std::fs::remove_file(dir.join("blocks.0.hook_mlp_out/shard-00001.safetensors")).unwrap();
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    assert!(matches!(
        ActivationDataset::open(&dir).unwrap_err(),
        LensError::MissingFile { .. }
    ));
    let r = store_activations(&m, &c, &hooks, &dir, &opts()).unwrap();
    assert_eq!(r.files_written, 1, "{r:?}");
    assert!(r.complete);
    assert_eq!(files(&dir), before);
    // a damaged shard fails verify
    let victim = dir.join("blocks.1.hook_resid_pre/shard-00000.safetensors");
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&victim, bytes).unwrap();
    let e = ActivationDataset::open(&dir).unwrap().verify().unwrap_err();
    assert!(matches!(e, LensError::ChecksumMismatch { .. }), "{e:?}");
    // another model into the same folder
    let e = store_activations(&tiny("gpt2"), &c, &hooks, &dir, &opts()).unwrap_err();
    assert!(
        matches!(e, LensError::BadData { .. }) && e.to_string().contains("another dataset"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sharded_processes_write_the_single_runs_files() {
    let m = tiny("llama");
    let c = corpus();
    let hooks = [HookPoint::parse("blocks.1.hook_resid_post").unwrap()];
    let (one, split) = (tmp("single"), tmp("split"));
    store_activations(&m, &c, &hooks, &one, &opts()).unwrap();
    let first = store_activations(
        &m,
        &c,
        &hooks,
        &split,
        &StoreOptions {
            shard: (1, 2),
            ..opts()
        },
    )
    .unwrap();
    assert!(!first.complete);
    assert!(ActivationDataset::open(&split).is_err());
    let second = store_activations(
        &m,
        &c,
        &hooks,
        &split,
        &StoreOptions {
            shard: (0, 2),
            ..opts()
        },
    )
    .unwrap();
    assert!(second.complete);
    assert_eq!(files(&one), files(&split));
    assert_eq!(
        std::fs::read(one.join("manifest.json")).unwrap(),
        std::fs::read(split.join("manifest.json")).unwrap()
    );
    // bad options and hooks
    for bad in [
        StoreOptions {
            shard: (2, 2),
            ..opts()
        },
        StoreOptions {
            batch_size: 0,
            ..opts()
        },
    ] {
        assert!(store_activations(&m, &c, &hooks, &tmp("bad"), &bad).is_err());
    }
    let pattern = [HookPoint::parse("blocks.0.attn.hook_pattern").unwrap()];
    let e = store_activations(&m, &c, &pattern, &tmp("pattern"), &opts()).unwrap_err();
    assert!(matches!(e, LensError::Unsupported { .. }), "{e:?}");
    for d in [one, split, tmp("bad"), tmp("pattern")] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `lens store` of the tiny Llama over a plain-text corpus into `out`, under a shell whose
/// file-size limit is `limit_kb` (`ulimit -f`) with SIGXFSZ `ignored` (a write past the limit
/// fails with EFBIG, as on a full disk) or not (the kernel kills the process mid-write).
fn lens_store_limited(
    out: &std::path::Path,
    corpus: &std::path::Path,
    shard: &str,
    limit: Option<(u64, bool)>,
) -> std::process::Output {
    let model = fixture_path("tiny/llama");
    let cmd = format!(
        "exec '{}' store --model '{}' --corpus '{}' --hook blocks.1.hook_resid_post --context 8 --batch 3 --contexts-per-shard 4 --shard {shard} --out '{}' --json",
        env!("CARGO_BIN_EXE_lens"),
        model.display(),
        corpus.display(),
        out.display()
    );
    let script = match limit {
        Some((kb, true)) => format!("ulimit -f {kb}; trap '' XFSZ; {cmd}"),
        Some((kb, false)) => format!("ulimit -f {kb}; {cmd}"),
        None => cmd,
    };
    std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_or_a_kill_mid_shard_leaves_nothing_that_reads_complete() {
    let dir = tmp("limits");
    std::fs::create_dir_all(&dir).unwrap();
    // a plain-text corpus, one document per line
    let text = corpus()
        .documents
        .iter()
        .map(|d| d.text.clone())
        .collect::<Vec<_>>()
        .join("\n");
    let corpus_file = dir.join("corpus.txt");
    std::fs::write(&corpus_file, text).unwrap();
    let single = dir.join("single");
    let out = lens_store_limited(&single, &corpus_file, "0/1", None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shard_bytes =
        std::fs::metadata(single.join("blocks.1.hook_resid_post/shard-00000.safetensors"))
            .unwrap()
            .len();
    let limit_kb = shard_bytes / 1024 / 2;
    assert!(
        limit_kb >= 2,
        "shards of {shard_bytes} bytes are too small to cut in half"
    );

    // the disk fills up in the middle of the first shard: a typed error, no shard, no manifest
    let full = dir.join("full");
    let out = lens_store_limited(&full, &corpus_file, "0/1", Some((limit_kb, true)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot write") && err.contains("free space") && !err.contains("panicked"),
        "{err}"
    );
    assert!(
        files(&full).is_empty(),
        "{:?}",
        files(&full).iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(ActivationDataset::open(&full).is_err());
    // with room again, the same command completes the dataset: the single run's bytes
    let out = lens_store_limited(&full, &corpus_file, "0/1", None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files(&full), files(&single));

    // half the shards written by one process, then a run killed mid-shard (SIGXFSZ): a
    // temporary is left, nothing that reads as a shard; the rerun keeps the complete shards,
    // sweeps the dead process's temporary and writes the rest
    let killed = dir.join("killed");
    let out = lens_store_limited(&killed, &corpus_file, "1/2", None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let half = files(&killed);
    let out = lens_store_limited(&killed, &corpus_file, "0/1", Some((limit_kb, false)));
    assert!(!out.status.success());
    let names: Vec<String> = files(&killed).into_iter().map(|f| f.0).collect();
    assert!(names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    assert_eq!(
        files(&killed)
            .into_iter()
            .filter(|f| !f.0.ends_with(".tmp"))
            .collect::<Vec<_>>(),
        half
    );
    assert!(ActivationDataset::open(&killed).is_err());
    let out = lens_store_limited(&killed, &corpus_file, "0/1", None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["files_kept"].as_u64(),
        Some(half.len() as u64),
        "{report}"
    );
    assert_eq!(files(&killed), files(&single));
    ActivationDataset::open(&killed).unwrap().verify().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
