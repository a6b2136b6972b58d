//! Hooks, caches, batching and errors on a real model (SmolLM2-135M, embedded).

mod common;

use candlelens::prelude::*;
use common::*;

const PET: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is";

#[test]
fn cache_has_every_hook_with_its_shape() {
    let m = model("smollm2-135m");
    let tokens = m.to_tokens("The capital of France is", None).unwrap();
    let (b, p) = (1, tokens.max_len());
    // the default leaves out the opt-in per-head results, as TransformerLens does
    let (_, plain) = m.run_with_cache(&tokens, None).unwrap();
    assert!(!plain.contains(HookPoint::Result(0)));
    assert!(plain.contains(HookPoint::Z(0)));
    let (_, cache) = m
        .run_with_cache(&tokens, Some(HookFilter::AllWithResult))
        .unwrap();
    assert_eq!(cache.len(), plain.len() + m.cfg.n_layers);
    let cfg = &m.cfg;
    for (hp, _) in HookPoint::all_for(cfg) {
        let t = cache.at(hp).unwrap_or_else(|e| panic!("{e}"));
        let want: Vec<usize> = match hp {
            HookPoint::Q(_) | HookPoint::RotQ(_) | HookPoint::Z(_) => {
                vec![b, p, cfg.n_heads, cfg.d_head]
            }
            HookPoint::K(_) | HookPoint::V(_) | HookPoint::RotK(_) => {
                vec![b, p, cfg.n_kv_heads, cfg.d_head]
            }
            HookPoint::AttnScores(_) | HookPoint::Pattern(_) => vec![b, cfg.n_heads, p, p],
            HookPoint::Result(_) => vec![b, p, cfg.n_heads, cfg.d_model],
            HookPoint::Ln1Scale(_) | HookPoint::Ln2Scale(_) | HookPoint::LnFinalScale => {
                vec![b, p, 1]
            }
            HookPoint::MlpPre(_) | HookPoint::MlpPreLinear(_) | HookPoint::MlpPost(_) => {
                vec![b, p, cfg.d_mlp]
            }
            _ => vec![b, p, cfg.d_model],
        };
        assert_eq!(t.dims(), want.as_slice(), "{hp}");
    }
    // the residual stream adds up: resid_post = resid_mid + mlp_out = resid_pre + attn_out + mlp_out
    let l = 3;
    let pre = cache.at(HookPoint::ResidPre(l)).unwrap();
    let attn = cache.at(HookPoint::AttnOut(l)).unwrap();
    let mlp = cache.at(HookPoint::MlpOut(l)).unwrap();
    let post = cache.at(HookPoint::ResidPost(l)).unwrap();
    let sum = ((pre + attn).unwrap() + mlp).unwrap();
    assert!(max_abs(&to_vec(&sum), &to_vec(post)) < 1e-4);
    // resid_post of l is resid_pre of l + 1
    let next = cache.at(HookPoint::ResidPre(l + 1)).unwrap();
    assert_eq!(to_vec(post), to_vec(next));
    // heads' results sum to attn_out (no o-bias in Llama)
    let result = cache.at(HookPoint::Result(l)).unwrap().sum(2).unwrap();
    assert!(max_abs(&to_vec(&result), &to_vec(attn)) < 1e-4);
    // attention rows are distributions and causal
    let pat = cache.at(HookPoint::Pattern(l)).unwrap();
    let rows = to_vec(&pat.sum(3).unwrap());
    assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-5));
    let upper: f32 = to_vec(&pat.i((0, 0, 0, 1..)).unwrap()).iter().sum();
    assert_eq!(upper, 0.0);
}

#[test]
fn filtered_cache_holds_only_what_was_asked() {
    let m = model("smollm2-135m");
    let tokens = m.to_tokens("Hello world", None).unwrap();
    let (_, cache) = m
        .run_with_cache(
            &tokens,
            Some(HookFilter::suffix("hook_resid_post").unwrap()),
        )
        .unwrap();
    assert_eq!(cache.len(), m.cfg.n_layers);
    let err = cache.get("blocks.0.hook_resid_pre").unwrap_err();
    assert!(matches!(err, LensError::NotCached { .. }), "{err}");
    assert!(cache.get("blocks.0.hook_resid_pst").is_err());
}

#[test]
fn hooks_read_and_replace() {
    let m = model("smollm2-135m");
    let tokens = m.to_tokens(PET, None).unwrap();
    let clean = to_vec(&m.forward(&tokens).unwrap());

    // an identity hook changes nothing, and sees the activation
    let mut seen = Vec::new();
    let mut hooks = Hooks::new();
    hooks
        .add("blocks.2.hook_resid_pre", |act, hp| {
            seen.push((hp.to_string(), act.dims().to_vec()));
            Ok(None)
        })
        .unwrap();
    let same = to_vec(&m.run_with_hooks(&tokens, &mut hooks).unwrap());
    drop(hooks);
    assert_eq!(same, clean);
    assert_eq!(
        seen,
        vec![(
            "blocks.2.hook_resid_pre".to_string(),
            vec![1, tokens.max_len(), m.cfg.d_model]
        )]
    );

    // zero-ablating the MLP of layer 0 changes the logits
    let mut hooks = Hooks::new();
    hooks
        .add("blocks.0.hook_mlp_out", |act, _| {
            Ok(Some(act.zeros_like()?))
        })
        .unwrap();
    let ablated = to_vec(&m.run_with_hooks(&tokens, &mut hooks).unwrap());
    assert!(max_abs(&ablated, &clean) > 0.1);

    // patching the whole residual stream with a cached one reproduces that run
    let other = m
        .to_tokens(PET.replace("Rachel", "Alice").as_str(), None)
        .unwrap();
    assert_eq!(other.max_len(), tokens.max_len());
    let (other_logits, other_cache) = m
        .run_with_cache(&other, Some(HookPoint::ResidPre(5).into()))
        .unwrap();
    let donor = other_cache.at(HookPoint::ResidPre(5)).unwrap().clone();
    let mut hooks = Hooks::new();
    hooks
        .add("blocks.5.hook_resid_pre", move |_, _| {
            Ok(Some(donor.clone()))
        })
        .unwrap();
    let patched = to_vec(&m.run_with_hooks(&tokens, &mut hooks).unwrap());
    assert!(max_abs(&patched, &to_vec(&other_logits)) < 1e-4);
}

#[test]
fn hook_errors_are_typed() {
    let m = model("smollm2-135m");
    let tokens = m.to_tokens("Hello world", None).unwrap();
    assert_eq!(tokens.max_len(), 2);
    let mut hooks = Hooks::new();
    assert!(matches!(
        hooks.add("blocks.0.hook_resid_pree", |_, _| Ok(None)),
        Err(LensError::UnknownHook { .. })
    ));
    hooks
        .add("blocks.99.hook_resid_pre", |_, _| Ok(None))
        .unwrap();
    let err = m.run_with_hooks(&tokens, &mut hooks).unwrap_err();
    assert!(
        matches!(
            err,
            LensError::LayerOutOfRange {
                layer: 99,
                n_layers: 30
            }
        ),
        "{err}"
    );

    // points this architecture never fires: rejected, never silently ignored
    for name in ["hook_pos_embed", "blocks.0.ln1_post.hook_scale"] {
        let mut hooks = Hooks::new();
        hooks.add(name, |_, _| Ok(None)).unwrap();
        let err = m.run_with_hooks(&tokens, &mut hooks).unwrap_err();
        assert!(
            matches!(err, LensError::HookNotOnModel { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("blocks.0.hook_resid_pre"), "{err}");
        let filter = HookFilter::names(&[name]).unwrap();
        assert!(matches!(
            m.run_with_cache(&tokens, Some(filter)),
            Err(LensError::HookNotOnModel { .. })
        ));
    }
    // Gemma 3 has post-attention norms: the same hook is fine there
    let g = model("gemma-3-270m");
    let gt = g.to_tokens("Hello world", None).unwrap();
    let (_, cache) = g
        .run_with_cache(
            &gt,
            Some(HookFilter::names(&["blocks.0.ln1_post.hook_scale"]).unwrap()),
        )
        .unwrap();
    assert!(cache.get("blocks.0.ln1_post.hook_scale").is_ok());
    // the attention viewer names the index that is out of range
    let (_, pc) = g
        .run_with_cache(&gt, Some(HookPoint::Pattern(0).into()))
        .unwrap();
    for (b, heads) in [(3, vec![(0, 0)]), (0, vec![(0, 99)]), (0, vec![(99, 0)])] {
        let err = AttentionView::from_cache(g, &pc, b, &heads, "t").unwrap_err();
        assert!(
            matches!(
                err,
                LensError::OutOfRange { .. } | LensError::LayerOutOfRange { .. }
            ),
            "{b} {heads:?}: {err}"
        );
    }
    assert!(AttentionView::from_cache(g, &pc, 0, &[(0, 1)], "t").is_ok());

    let mut hooks = Hooks::new();
    hooks
        .add("blocks.0.hook_resid_pre", |act, _| {
            Ok(Some(act.narrow(1, 0, 1)?))
        })
        .unwrap();
    let err = m.run_with_hooks(&tokens, &mut hooks).unwrap_err();
    assert!(matches!(err, LensError::HookShape { .. }), "{err}");

    let mut hooks = Hooks::new();
    hooks
        .add("blocks.1.attn.hook_pattern", |_, _| {
            Err(LensError::Custom("stop here".into()))
        })
        .unwrap();
    let err = m.run_with_hooks(&tokens, &mut hooks).unwrap_err();
    assert_eq!(err.to_string(), "stop here");
}

#[test]
fn padded_batch_equals_single_runs() {
    for alias in ["smollm2-135m", "gemma-3-270m"] {
        let m = model(alias);
        let prompts = ["Is Paris the capital of France?\n", PET, "1 2 3 4"];
        let batch = m.to_tokens(prompts.as_slice(), None).unwrap();
        assert!(!batch.is_rectangular());
        let last = m.last_logits(&batch).unwrap();
        let full = m.forward(&batch).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let single = m.to_tokens(*p, None).unwrap();
            let want = to_vec(&m.last_logits(&single).unwrap());
            let got = to_vec(&last.i(i).unwrap());
            let d = max_abs(&got, &want);
            assert!(
                d < 1e-4,
                "{alias} prompt {i}: batched last logits differ by {d}"
            );
            let pos = batch.last_positions()[i];
            let got_full = to_vec(&full.i((i, pos)).unwrap());
            assert!(max_abs(&got_full, &want) < 1e-4);
        }
    }
}

#[test]
fn tokens_helpers() {
    let m = model("gemma-3-270m");
    let s = m
        .to_str_tokens("Is Paris the capital of France?\n", None)
        .unwrap();
    assert_eq!(
        s,
        ["<bos>", "Is", " Paris", " the", " capital", " of", " France", "?", "\n"]
    );
    let s = m.to_str_tokens("Is Paris", Some(false)).unwrap();
    assert_eq!(s, ["Is", " Paris"]);
    let paris = m.to_single_token(" Paris").unwrap();
    assert_eq!(m.to_string(&[paris]).unwrap(), " Paris");
    let err = m.to_single_token(" Pebbles-the-cat").unwrap_err();
    assert!(matches!(err, LensError::NotSingleToken { .. }), "{err}");
    assert!(err.to_string().contains("not one"), "{err}");

    let smol = model("smollm2-135m");
    assert_eq!(smol.to_str_tokens("Hi", None).unwrap(), ["Hi"]); // SmolLM2 adds no BOS
    assert_eq!(
        smol.to_str_tokens("Hi", Some(true)).unwrap(),
        ["<|im_start|>", "Hi"]
    );
}

#[test]
fn bad_inputs_get_typed_errors() {
    let m = model("smollm2-135m");
    assert!(matches!(m.to_tokens("", None), Err(LensError::EmptyPrompt)));
    assert!(matches!(
        m.tokens_from_ids(vec![]),
        Err(LensError::EmptyPrompt)
    ));
    let long = vec![1u32; m.cfg.n_ctx + 1];
    assert!(matches!(
        m.tokens_from_ids(long),
        Err(LensError::PromptTooLong { .. })
    ));
    let err = m.tokens_from_ids(vec![1, 999_999]).unwrap_err();
    assert!(
        matches!(err, LensError::TokenOutOfRange { id: 999_999, .. }),
        "{err}"
    );
    let t = m.to_tokens("Hello", None).unwrap();
    assert!(matches!(
        t.resolve_pos(0, 5),
        Err(LensError::PositionOutOfRange { .. })
    ));
    assert!(m.loss(&m.tokens_from_ids(vec![5]).unwrap()).is_err());
}

#[test]
fn bad_files_get_typed_errors() {
    let dir = std::env::temp_dir().join(format!("candlelens-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let missing = dir.join("nope.gguf");
    let err = HookedTransformer::from_pretrained(missing.to_str().unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            LensError::UnknownModel { .. } | LensError::MissingFile { .. }
        ),
        "{err}"
    );

    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a gguf file at all").unwrap();
    let err = HookedTransformer::from_pretrained(garbage.to_str().unwrap())
        .err()
        .unwrap();
    assert!(matches!(err, LensError::CorruptFile { .. }), "{err}");

    // a truncated download: the header parses, the tensors do not fit
    let real = candlelens::load::resolve("smollm2-135m").unwrap();
    let candlelens::load::Resolved::Gguf(real) = real else {
        panic!()
    };
    let bytes = std::fs::read(&real).unwrap();
    let cut = dir.join("truncated.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = HookedTransformer::from_pretrained(cut.to_str().unwrap())
        .err()
        .unwrap();
    assert!(matches!(err, LensError::CorruptFile { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");

    let err = HookedTransformer::from_pretrained("gemma-3-207m")
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("did you mean 'gemma-3-270m'"),
        "{err}"
    );

    let empty_dir = dir.join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let err = HookedTransformer::from_pretrained(empty_dir.to_str().unwrap())
        .err()
        .unwrap();
    assert!(matches!(err, LensError::MissingFile { .. }), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A copy of a tiny checkpoint folder with one config field replaced.
fn tiny_with(family: &str, field: &str, value: serde_json::Value) -> std::path::PathBuf {
    let src = fixture_path(&format!("tiny/{family}"));
    let dir = std::env::temp_dir().join(format!(
        "candlelens-cfg-{family}-{}-{}",
        field.replace('/', "_"),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg[field] = value;
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

#[test]
fn damaged_config_dimensions_are_typed_errors_not_panics() {
    for (family, field, value) in [
        ("llama", "num_attention_heads", serde_json::json!(0)),
        (
            "llama",
            "num_hidden_layers",
            serde_json::json!(1_000_000_000_000u64),
        ),
        ("llama", "num_key_value_heads", serde_json::json!(0)),
        ("llama", "head_dim", serde_json::json!(0)),
        ("gpt2", "n_head", serde_json::json!(0)),
        ("gpt2", "n_layer", serde_json::json!(0)),
        ("gpt2", "n_head", serde_json::json!(100_000)),
    ] {
        let dir = tiny_with(family, field, value.clone());
        let err = HookedTransformer::from_pretrained(dir.to_str().unwrap())
            .err()
            .unwrap_or_else(|| panic!("{family} {field}={value} loaded"));
        assert!(
            matches!(err, LensError::UnsupportedConfig { .. }),
            "{family} {field}={value}: {err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_config_without_model_type_names_the_field_and_the_choices() {
    let dir = tiny_with("llama", "model_type", serde_json::Value::Null);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("model_type");
    cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let err = HookedTransformer::from_pretrained(dir.to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing 'model_type'"), "{err}");
    assert!(err.contains("LlamaForCausalLM"), "{err}");
    assert!(err.contains("qwen3"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
