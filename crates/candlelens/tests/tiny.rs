//! HF checkpoint folders (config.json + safetensors + tokenizer.json): tiny random models per
//! family, saved by transformers, against transformers' own outputs for a right-padded batch
//! (fixtures from `scripts/make-reference.py --only tiny`).

mod common;

use candlelens::prelude::*;
use common::*;
use serde_json::Value;

fn flat(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        _ => panic!("not a number"),
    }
}

fn check_family(family: &str) {
    let dir = fixture_path(&format!("tiny/{family}"));
    let fx = read_fixture(&format!("tiny/{family}/reference.json"));
    let model = HookedTransformer::from_pretrained(dir.to_str().unwrap())
        .unwrap_or_else(|e| panic!("{family}: {e}"));
    let prompts: Vec<&str> = fx["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let tokens = model.to_tokens(prompts.as_slice(), None).unwrap();
    for (b, want) in fx["token_ids"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            tokens.row(b).unwrap(),
            u32s(want).as_slice(),
            "{family}: tokens of prompt {b}"
        );
    }
    assert!(
        !tokens.is_rectangular(),
        "the fixture batch should need padding"
    );
    let filter = HookFilter::Predicate(Box::new(|hp| {
        matches!(
            hp,
            HookPoint::ResidPre(_) | HookPoint::ResidPost(_) | HookPoint::Pattern(_)
        )
    }));
    let (logits, cache) = model.run_with_cache(&tokens, Some(filter)).unwrap();
    let mut worst = 0f32;
    for (b, len) in tokens.lengths().into_iter().enumerate() {
        let got = to_vec(&logits.i((b, ..len)).unwrap());
        let d = max_abs(&got, &flat(&fx["logits"][b]));
        assert!(d <= 1e-4, "{family}: logits of prompt {b} differ by {d}");
        worst = worst.max(d);
        for l in 0..model.cfg.n_layers {
            for (hp, key) in [
                (HookPoint::ResidPre(l), "resid_pre"),
                (HookPoint::ResidPost(l), "resid_post"),
            ] {
                let got = to_vec(&cache.at(hp).unwrap().i((b, ..len)).unwrap());
                let d = max_abs(&got, &flat(&fx[key][l][b]));
                assert!(d <= 1e-4, "{family}: {hp} of prompt {b} differs by {d}");
                worst = worst.max(d);
            }
            let got = to_vec(
                &cache
                    .at(HookPoint::Pattern(l))
                    .unwrap()
                    .i((b, .., ..len, ..len))
                    .unwrap(),
            );
            let d = max_abs(&got, &flat(&fx["patterns"][l][b]));
            assert!(
                d <= 1e-5,
                "{family}: pattern {l} of prompt {b} differs by {d}"
            );
        }
    }
    eprintln!("tiny {family}: max abs difference over logits and residuals {worst:.2e}");
}

macro_rules! family_tests {
    ($($name:ident => $family:literal,)*) => {$(
        #[test]
        fn $name() {
            check_family($family);
        }
    )*};
}

family_tests! {
    tiny_gpt2_matches_transformers => "gpt2",
    tiny_gptj_matches_transformers => "gptj",
    tiny_neox_matches_transformers => "neox",
    tiny_llama_matches_transformers => "llama",
    tiny_mistral_matches_transformers => "mistral",
    tiny_gpt_neo_matches_transformers => "gpt_neo",
    tiny_phi_matches_transformers => "phi",
    tiny_phi3_matches_transformers => "phi3",
    tiny_olmo2_matches_transformers => "olmo2",
    tiny_mixtral_matches_transformers => "mixtral",
    tiny_qwen2_moe_matches_transformers => "qwen2_moe",
    tiny_qwen3_moe_matches_transformers => "qwen3_moe",
    tiny_qwen2_matches_transformers => "qwen2",
    tiny_qwen3_matches_transformers => "qwen3",
    tiny_gemma_matches_transformers => "gemma",
    tiny_gemma2_matches_transformers => "gemma2",
    tiny_gemma3_matches_transformers => "gemma3",
}

#[test]
fn lens_run_works_on_a_checkpoint_folder() {
    let dir = fixture_path("tiny/gemma3");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
        .args([
            "run",
            "--model",
            dir.to_str().unwrap(),
            "--tokens",
            "2,40,41,42",
            "--top-k",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u32s(&v["token_ids"]), vec![2, 40, 41, 42]);
    assert_eq!(v["top_k"].as_array().unwrap().len(), 3);
    assert_eq!(v["resid_pre_last"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["resid_pre_last"][0]["first16"].as_array().unwrap().len(),
        16
    );
}

#[test]
fn lens_reports_errors_without_panicking() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
        .args(["run", "--model", "smollm-135m", "--prompt", "hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("Error: unknown model 'smollm-135m'"),
        "{err}"
    );
    assert!(err.contains("did you mean 'smollm2-135m'"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unsupported_checkpoints_get_typed_errors() {
    let dir = std::env::temp_dir().join(format!("candlelens-bad-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture_path("tiny/llama");
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let config: Value = read_fixture("tiny/llama/config.json");
    let load = |cfg: &Value| {
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        HookedTransformer::from_pretrained(dir.to_str().unwrap())
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(load(&config), None, "the unmodified copy loads");

    let mut c = config.clone();
    c["model_type"] = "mamba".into();
    let e = load(&c).unwrap();
    assert!(e.starts_with("unsupported architecture 'mamba'"), "{e}");

    let mut c = config.clone();
    c["hidden_act"] = "swiglu_weird".into();
    let e = load(&c).unwrap();
    assert!(e.contains("hidden_act = swiglu_weird"), "{e}");

    let mut c = config.clone();
    c["rope_parameters"]["rope_type"] = "yarn".into();
    let e = load(&c).unwrap();
    assert!(e.contains("rope_type = yarn"), "{e}");

    let mut c = config.clone();
    c["num_key_value_heads"] = 3.into();
    let e = load(&c).unwrap();
    assert!(e.contains("n_kv_heads = 3"), "{e}");

    let mut c = config.clone();
    c["intermediate_size"] = 100.into();
    let e = load(&c).unwrap();
    assert!(e.contains("has shape [96, 64], expected [100, 64]"), "{e}");

    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load(&config).unwrap();
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn half_precision_weights_stay_close_to_f32() {
    let dir = fixture_path("tiny/llama");
    let f32_model = HookedTransformer::from_pretrained(dir.to_str().unwrap()).unwrap();
    let tokens = f32_model
        .to_tokens("The pet of this family is", None)
        .unwrap();
    let want = to_vec(&f32_model.forward(&tokens).unwrap());
    for dtype in ["bf16", "f16"] {
        let opts = LoadOptions::parse("cpu", dtype).unwrap();
        let m = HookedTransformer::from_pretrained_with(dir.to_str().unwrap(), &opts).unwrap();
        assert_eq!(m.dtype().as_str(), dtype);
        let got = to_vec(&m.forward(&tokens).unwrap());
        let err = rel_l2(&got, &want);
        assert!(err < 0.02, "{dtype}: logits rel err {err}");
    }
}

#[test]
fn sharded_and_odd_checkpoints_get_typed_errors() {
    let dir = std::env::temp_dir().join(format!("candlelens-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture_path("tiny/gpt2");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    // an index that names a shard which is not there
    std::fs::copy(
        src.join("model.safetensors"),
        dir.join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let index = serde_json::json!({"weight_map": {
        "transformer.wte.weight": "model-00001-of-00002.safetensors",
        "transformer.h.0.ln_1.weight": "model-00002-of-00002.safetensors"}});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let err = HookedTransformer::from_pretrained(dir.to_str().unwrap())
        .err()
        .unwrap();
    assert!(matches!(err, LensError::MissingFile { .. }), "{err}");
    assert!(
        err.to_string().contains("model-00002-of-00002.safetensors"),
        "{err}"
    );

    // a tensor of a dtype the loader does not take
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    std::fs::remove_file(dir.join("model-00001-of-00002.safetensors")).unwrap();
    let header = br#"{"transformer.wte.weight":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 16]);
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    let err = HookedTransformer::from_pretrained(dir.to_str().unwrap())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("dtype of transformer.wte.weight = I64"),
        "{err}"
    );

    // a truncated safetensors file
    let real = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &real[..real.len() - 100]).unwrap();
    let err = HookedTransformer::from_pretrained(dir.to_str().unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("truncated"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn lens_patch_prints_the_grid() {
    let dir = fixture_path("tiny/llama");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
        .args([
            "patch",
            "--model",
            dir.to_str().unwrap(),
            "--clean",
            "The pet of this family is",
            "--corrupt",
            "The pat of this family is",
            "--answers",
            " is",
            " of",
            "--hook",
            "resid_pre",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n_tokens = v["str_tokens"].as_array().unwrap().len();
    let grid = v["grid"].as_array().unwrap();
    assert_eq!(grid.len(), 2);
    assert_eq!(grid[0].as_array().unwrap().len(), n_tokens);
    assert!(
        v["clean_diff"].is_number() && v["corrupt_diff"].is_number() && v["seconds"].is_number()
    );
    // the prompts differ in one token ("e" / "a" at position 5): patching it at layer 0 restores
    // the clean run, and patching any other position at layer 0 is a no-op
    for (p, cell) in grid[0].as_array().unwrap().iter().enumerate() {
        let want = if p == 5 { 1.0 } else { 0.0 };
        assert!(
            (cell.as_f64().unwrap() - want).abs() < 1e-4,
            "position {p}: {cell}"
        );
    }
}

#[test]
fn a_cache_used_with_another_model_or_missing_points_is_a_typed_error() {
    let tiny = |f: &str| {
        HookedTransformer::from_pretrained(fixture_path(&format!("tiny/{f}")).to_str().unwrap())
            .unwrap()
    };
    let (llama, gpt2) = (tiny("llama"), tiny("gpt2"));
    let tokens = llama.to_tokens("The cat sat", None).unwrap();
    let (_, cache) = llama.run_with_cache(&tokens, None).unwrap();
    cache.check_model(&llama.cfg).unwrap();

    // the llama cache handed to gpt2's analyses
    let e = cache
        .stack_head_results(&gpt2, None, Pos::Last)
        .unwrap_err();
    assert!(matches!(e, LensError::Mismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("run run_with_cache on this model"),
        "{e}"
    );
    let stack = cache.accumulated_resid(None, false, Pos::Last).unwrap();
    assert!(cache.apply_ln_to_stack(&gpt2, &stack).is_err());
    let e = AttentionView::from_cache(&gpt2, &cache, 0, &[(0, 0)], "x").unwrap_err();
    assert!(matches!(e, LensError::Mismatch { .. }), "{e}");

    // a cache without the residual stream: NotCached, not an underflow
    let only_z = HookFilter::Points(vec![HookPoint::Z(0)]);
    let (_, zc) = llama.run_with_cache(&tokens, Some(only_z)).unwrap();
    let e = zc.accumulated_resid(None, false, Pos::Last).unwrap_err();
    assert!(matches!(e, LensError::NotCached { .. }), "{e}");

    // head results of a z with the wrong head count name the shape wanted
    let z = cache.at(HookPoint::Z(0)).unwrap();
    let two_heads = z.narrow(2, 0, 2).unwrap();
    let e = gpt2.head_results(0, &two_heads).unwrap_err();
    assert!(matches!(e, LensError::Mismatch { .. }), "{e}");
    assert!(e.to_string().contains("hook_z"), "{e}");
    assert!(matches!(
        llama.head_results(99, z),
        Err(LensError::LayerOutOfRange { .. })
    ));

    // a prompt index past the batch
    assert!(matches!(tokens.row(3), Err(LensError::OutOfRange { .. })));
}

#[test]
fn the_hook_audit_reports_what_fired_and_what_never_did() {
    let model =
        HookedTransformer::from_pretrained(fixture_path("tiny/llama").to_str().unwrap()).unwrap();
    let tokens = model.to_tokens("The cat sat", None).unwrap();
    let mut hooks = Hooks::new();
    hooks
        .add("blocks.0.hook_resid_pre", |a, _| Ok(Some(a.zeros_like()?)))
        .unwrap();
    hooks.add_filter(HookFilter::suffix("attn.hook_pattern").unwrap(), |_, _| {
        Ok(None)
    });
    // a rotary model has no learned positions: this predicate matches nothing
    hooks.add_filter(HookFilter::suffix("hook_pos_embed").unwrap(), |a, _| {
        Ok(Some(a.zeros_like()?))
    });
    model.run_with_hooks(&tokens, &mut hooks).unwrap();
    let audit = hooks.audit();
    let n = model.cfg.n_layers;
    assert_eq!(audit.fired.len(), 1 + n, "{audit}");
    assert_eq!(audit.fired[0].point, HookPoint::ResidPre(0));
    assert_eq!((audit.fired[0].calls, audit.fired[0].replaced), (1, 1));
    assert_eq!(audit.replacements(), 1);
    assert_eq!(
        audit.never_fired,
        vec!["hook 2 (a predicate filter)".to_string()]
    );
    assert!(!audit.all_fired());
    assert!(audit.to_string().contains("never fired: hook 2"), "{audit}");

    // the audit covers the last run only
    model.run_with_hooks(&tokens, &mut hooks).unwrap();
    assert_eq!(hooks.audit(), audit);
}

#[test]
fn parallel_blocks_list_only_the_points_they_fire() {
    let load = |f: &str| {
        HookedTransformer::from_pretrained(fixture_path(&format!("tiny/{f}")).to_str().unwrap())
            .unwrap()
    };
    // GPT-J: one norm feeds both branches, so no ln2 and no resid_mid
    let gptj = load("gptj");
    for hp in [
        HookPoint::ResidMid(0),
        HookPoint::Ln2Normalized(0),
        HookPoint::Ln2Scale(0),
    ] {
        assert!(
            matches!(hp.check(&gptj.cfg), Err(LensError::HookNotOnModel { .. })),
            "{hp} on GPT-J"
        );
    }
    // GPT-NeoX: the MLP has its own norm, whose hooks fire with the shapes listed
    let neox = load("neox");
    assert!(HookPoint::ResidMid(0).check(&neox.cfg).is_err());
    let tokens = neox.to_tokens("The cat sat", None).unwrap();
    let (_, cache) = neox.run_with_cache(&tokens, None).unwrap();
    for (hp, _) in HookPoint::all_for(&neox.cfg) {
        if hp != HookPoint::Result(0) && hp != HookPoint::Result(1) {
            assert!(cache.contains(hp), "{hp} is listed but did not fire");
        }
    }
    assert!(cache.contains(HookPoint::Ln2Normalized(1)));
}
