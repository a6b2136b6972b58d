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
