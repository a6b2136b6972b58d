//! Bad input, round 3: each kind of input that once gave a silent wrong result (NaN printed as a
//! result, a config value that breaks the forward, weights dropped without a word, a path out
//! of the checkpoint folder) now gives a typed error that names the problem and the fix.

mod common;

use std::path::{Path, PathBuf};

use candlelens::metrics;
use candlelens::prelude::*;
use common::*;
use serde_json::Value;

/// A copy of the tiny `family` checkpoint in a fresh folder, its config edited by `edit`.
fn damaged(family: &str, tag: &str, edit: impl Fn(&mut Value)) -> PathBuf {
    let src = fixture_path(&format!("tiny/{family}"));
    let dir = std::env::temp_dir().join(format!(
        "candlelens-hostile-{family}-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

/// Sets the rotary base wherever the config keeps it (transformers 5's `rope_parameters`, per
/// layer type for Gemma 3, or the top-level `rope_theta`).
fn set_rope_theta(c: &mut Value, v: Value) {
    match c.get_mut("rope_parameters") {
        Some(rp) if rp.get("full_attention").is_some() => rp["full_attention"]["rope_theta"] = v,
        Some(rp) if rp.is_object() => rp["rope_theta"] = v,
        _ => c["rope_theta"] = v,
    }
}

/// An edit of a config.
type Edit = Box<dyn Fn(&mut Value)>;

fn load(dir: &Path) -> candlelens::Result<HookedTransformer> {
    HookedTransformer::from_pretrained(dir.to_str().unwrap())
}

#[test]
fn config_values_that_break_the_forward_are_refused() {
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "llama",
            "rope_theta",
            Box::new(|c| set_rope_theta(c, (-1.0).into())),
        ),
        (
            "llama",
            "rope_theta",
            Box::new(|c| set_rope_theta(c, 0.0.into())),
        ),
        (
            "gemma3",
            "rope_theta",
            Box::new(|c| set_rope_theta(c, (-10.0).into())),
        ),
        (
            "phi",
            "rope_theta",
            Box::new(|c| set_rope_theta(c, 0.0.into())),
        ),
        (
            "llama",
            "rms_norm_eps",
            Box::new(|c| c["rms_norm_eps"] = (-1e-6).into()),
        ),
        (
            "llama",
            "rope_scaling.factor",
            Box::new(|c| {
                c["rope_parameters"] =
                    serde_json::json!({"rope_type": "linear", "factor": 0.0, "rope_theta": 10000.0})
            }),
        ),
        (
            "gemma2",
            "sliding_window",
            Box::new(|c| c["sliding_window"] = 0.into()),
        ),
        (
            "gemma3",
            "sliding_window",
            Box::new(|c| c["sliding_window"] = 0.into()),
        ),
        (
            "gemma2",
            "final_logit_softcapping",
            Box::new(|c| c["final_logit_softcapping"] = 0.0.into()),
        ),
        (
            "gemma2",
            "attn_logit_softcapping",
            Box::new(|c| c["attn_logit_softcapping"] = (-5.0).into()),
        ),
        (
            "gemma2",
            "query_pre_attn_scalar",
            Box::new(|c| c["query_pre_attn_scalar"] = 0.into()),
        ),
        // a value of the wrong type is never taken for a missing one
        (
            "llama",
            "rope_theta",
            Box::new(|c| set_rope_theta(c, "10000".into())),
        ),
        (
            "gemma2",
            "sliding_window",
            Box::new(|c| c["sliding_window"] = "4096".into()),
        ),
        (
            "llama",
            "tie_word_embeddings",
            Box::new(|c| c["tie_word_embeddings"] = "yes".into()),
        ),
        (
            "llama",
            "hidden_size",
            Box::new(|c| c["hidden_size"] = "64".into()),
        ),
    ];
    for (i, (family, field, edit)) in cases.iter().enumerate() {
        let dir = damaged(family, &format!("cfg{i}"), edit);
        let err = load(&dir)
            .err()
            .unwrap_or_else(|| panic!("case {i}: {family} {field}: loaded"));
        assert!(
            matches!(
                err,
                LensError::UnsupportedConfig { .. } | LensError::Json { .. }
            ),
            "{family} {field}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(field.split('.').next().unwrap()),
            "{family} {field}: {text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_checkpoint_with_more_layers_than_its_config_is_refused() {
    for (family, key) in [("llama", "num_hidden_layers"), ("gpt2", "n_layer")] {
        let dir = damaged(family, "layers", |c| c[key] = 1.into());
        let err = load(&dir).err().expect("loaded with a layer dropped");
        assert!(matches!(err, LensError::BadWeight { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("block 1") && text.contains("to 2"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_checkpoint_tensor_the_model_would_not_use_is_named() {
    // a value head (a reward model's) and a Llama 3 GGUF's rotary factors under their names
    for (family, extra) in [
        ("llama", "v_head.weight"),
        ("gpt2", "transformer.h.0.attn.c_fc.weight"),
    ] {
        let dir = damaged(family, "unused", |_| {});
        let path = dir.join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        tensors.insert(
            extra.to_string(),
            Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap(),
        );
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let err = load(&dir).err().expect("loaded with a tensor left unused");
        assert!(matches!(err, LensError::BadWeight { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(extra) && text.contains("not used"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn an_npz_header_that_lies_about_its_shape_is_refused_before_allocating() {
    let src = fixture_path("sae/gemma_scope/params.npz");
    let dir = std::env::temp_dir().join(format!("candlelens-hostile-npz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = std::fs::read(src).unwrap();
    // W_enc's header says (64, 48); make it claim 4e17 bytes in the header's padding, the
    // archive's byte counts untouched
    let old = b"'shape': (64, 48), }";
    let at = bytes
        .windows(old.len())
        .position(|w| w == old)
        .expect("the fixture's W_enc header");
    let new = b"'shape': (10000000000, 10000000), }";
    assert!(bytes[at + old.len()..at + new.len()]
        .iter()
        .all(|&b| b == b' '));
    bytes[at..at + new.len()].copy_from_slice(new);
    std::fs::write(dir.join("params.npz"), &bytes).unwrap();
    let err = candlelens::sae::Sae::load_gemma_scope(&dir, "blocks.1.hook_resid_post")
        .expect_err("read a lying header");
    assert!(matches!(err, LensError::CorruptFile { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("[10000000000, 10000000]") && text.contains("bytes are stored"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_nan_weight_is_named_at_load() {
    let dir = damaged("llama", "nan", |_| {});
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let name = "model.layers.1.mlp.down_proj.weight";
    let t = tensors[name].to_dtype(DType::F32).unwrap();
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[7] = f32::NAN;
    v[8] = f32::INFINITY;
    let dtype = tensors[name].dtype();
    tensors.insert(
        name.to_string(),
        Tensor::from_vec(v, t.shape(), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load(&dir).err().expect("a NaN checkpoint loaded");
    let text = err.to_string();
    assert!(matches!(err, LensError::BadWeight { .. }), "{err:?}");
    assert!(
        text.contains("blocks.1.mlp.W_out") && text.contains("2 NaN or infinite"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nan_logits_and_nan_metrics_are_numerical_errors_not_results() {
    let m = tiny("llama");
    let tokens = m.to_tokens("The pet of this family is", None).unwrap();
    // a hook that returns NaN: the run stops, naming the logits and the likely cause
    let mut hooks = Hooks::new();
    hooks
        .add("blocks.1.hook_resid_pre", |a, _| Ok(Some((a * f64::NAN)?)))
        .unwrap();
    let err = m.run_with_hooks(&tokens, &mut hooks).unwrap_err();
    assert!(matches!(err, LensError::Numerical { .. }), "{err:?}");
    assert!(err.to_string().contains("hook"), "{err}");
    // a metric that is NaN is the metric's fault, not "the corruption does not change it"
    let (clean, corrupt) = corrupted_pair(&m, |n| n / 2);
    let nan: metrics::Metric = Box::new(|_| Ok(f32::NAN));
    let p = Patcher::new(&m, &clean, &corrupt, nan).unwrap();
    let err = p.sweep(PatchTarget::ResidPre).unwrap_err();
    assert!(matches!(err, LensError::Numerical { .. }), "{err:?}");
    assert!(err.to_string().contains("metric"), "{err}");
}

#[test]
fn f16_is_refused_where_it_overflows() {
    let opts = LoadOptions::parse("cpu", "f16").unwrap();
    for family in ["gemma2", "gemma3"] {
        let dir = fixture_path(&format!("tiny/{family}"));
        let err = HookedTransformer::from_pretrained_with(dir.to_str().unwrap(), &opts)
            .err()
            .expect("f16 Gemma loaded");
        assert!(err.to_string().contains("bf16"), "{err}");
    }
    // elsewhere f16 runs
    let dir = fixture_path("tiny/llama");
    let m = HookedTransformer::from_pretrained_with(dir.to_str().unwrap(), &opts).unwrap();
    m.forward(&m.to_tokens("The pet", None).unwrap()).unwrap();
}

#[test]
fn a_shard_index_pointing_out_of_the_folder_is_refused_unread() {
    let dir = damaged("llama", "index", |_| {});
    std::fs::rename(
        dir.join("model.safetensors"),
        dir.join("shard-1.safetensors"),
    )
    .unwrap();
    let secret = std::env::temp_dir().join(format!("candlelens-secret-{}", std::process::id()));
    std::fs::write(&secret, "TOP-SECRET-BYTES").unwrap();
    let index = serde_json::json!({
        "weight_map": {
            "model.embed_tokens.weight": "shard-1.safetensors",
            "model.norm.weight": format!("../{}", secret.file_name().unwrap().to_str().unwrap()),
        }
    });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let err = load(&dir).err().expect("loaded through a hostile index");
    let text = err.to_string();
    assert!(
        text.contains("not a file of the checkpoint folder"),
        "{text}"
    );
    assert!(!text.contains("TOP-SECRET"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(&secret).unwrap();
}

/// A copy of an SAE fixture folder with its cfg.json edited and its weights edited.
fn damaged_sae(
    name: &str,
    tag: &str,
    cfg: impl Fn(&mut Value),
    weights: impl Fn(&mut std::collections::HashMap<String, Tensor>),
) -> PathBuf {
    let src = fixture_path(&format!("sae/{name}"));
    let dir = std::env::temp_dir().join(format!(
        "candlelens-hostile-sae-{name}-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("cfg.json")).unwrap()).unwrap();
    cfg(&mut c);
    std::fs::write(dir.join("cfg.json"), c.to_string()).unwrap();
    let mut ts =
        candle_core::safetensors::load(src.join("sae_weights.safetensors"), &Device::Cpu).unwrap();
    weights(&mut ts);
    candle_core::safetensors::save(&ts, dir.join("sae_weights.safetensors")).unwrap();
    dir
}

#[test]
fn sae_files_that_would_run_wrongly_are_refused() {
    use candlelens::sae::Sae;
    let keep = |_: &mut std::collections::HashMap<String, Tensor>| {};
    // a JumpReLU SAE whose cfg.json lacks its architecture: not run as ReLU with the
    // threshold dropped
    let dir = damaged_sae(
        "jumprelu",
        "noarch",
        |c| {
            c.as_object_mut().unwrap().remove("architecture");
        },
        keep,
    );
    let err = Sae::load(&dir).expect_err("loaded without its threshold");
    assert!(
        err.to_string().contains("\"architecture\": \"jumprelu\""),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // NaN thresholds: not L0 = 0 reported as a result
    let dir = damaged_sae(
        "jumprelu",
        "nan",
        |_| {},
        |ts| {
            let t = ts["threshold"].to_dtype(DType::F32).unwrap();
            let mut v = t.to_vec1::<f32>().unwrap();
            v[3] = f32::NAN;
            ts.insert("threshold".into(), Tensor::new(v, &Device::Cpu).unwrap());
        },
    );
    let err = Sae::load(&dir).expect_err("loaded NaN thresholds");
    assert!(err.to_string().contains("threshold holds 1 NaN"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    // no features at all
    let dir = damaged_sae(
        "standard",
        "empty",
        |c| c["d_sae"] = 0.into(),
        |ts| {
            let d_in = ts["W_enc"].dim(0).unwrap();
            ts.insert(
                "W_enc".into(),
                Tensor::zeros((d_in, 0), DType::F32, &Device::Cpu).unwrap(),
            );
            ts.insert(
                "W_dec".into(),
                Tensor::zeros((0, d_in), DType::F32, &Device::Cpu).unwrap(),
            );
            ts.insert(
                "b_enc".into(),
                Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap(),
            );
        },
    );
    let err = Sae::load(&dir).expect_err("loaded an SAE without features");
    assert!(matches!(err, LensError::BadData { .. }), "{err:?}");
    assert!(err.to_string().contains("d_sae"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_arguments_that_size_work_are_bounded_and_flags_that_cannot_apply_are_refused() {
    let lens = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let model = fixture_path("tiny/llama");
    let model = model.to_str().unwrap();
    for args in [
        vec![
            "bench",
            "forward",
            "--model",
            model,
            "--prompt",
            "hi",
            "--runs",
            "18446744073709551615",
        ],
        vec![
            "attribute",
            "--model",
            model,
            "--clean",
            "a b",
            "--corrupt",
            "a c",
            "--answers",
            " a",
            " b",
            "--ig-steps",
            "18446744073709551615",
        ],
        vec!["lre", "--model", model, "--causality-rank", "0"],
        vec!["run", "--model", model, "--tokens", "1,2", "--bos"],
    ] {
        let (ok, stderr) = lens(&args);
        assert!(!ok, "{args:?} ran");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
    // a mistyped SAE path is a missing folder, not an unknown release
    let (ok, stderr) = lens(&[
        "sae",
        "--model",
        model,
        "--sae",
        "my-saes/layer_3",
        "--prompt",
        "hi",
    ]);
    assert!(!ok && stderr.contains("neither an SAE folder"), "{stderr}");
}

#[test]
fn a_bad_hub_timeout_is_an_error_not_the_default() {
    // (the only test that sets this variable)
    std::env::set_var(candlelens::load::hub::HUB_TIMEOUT_VAR, "soon");
    let err = candlelens::load::hub::stall_timeout().unwrap_err();
    std::env::remove_var(candlelens::load::hub::HUB_TIMEOUT_VAR);
    assert!(err.to_string().contains("CANDLELENS_HUB_TIMEOUT"), "{err}");
}

#[test]
fn a_path_that_does_not_exist_gets_no_score() {
    let m = tiny("llama");
    let (clean, corrupt) = corrupted_pair(&m, |n| n / 2);
    let p = PathPatcher::new(&m, &clean, &corrupt, metrics::logit_diff_metric(&[(5, 9)])).unwrap();
    let receivers = Receivers::parse(&["1.0:q"]).unwrap();
    let err = p.patch(&[(1, 2)], &receivers).unwrap_err();
    assert!(matches!(err, LensError::BadParameter { .. }), "{err:?}");
    assert!(err.to_string().contains("no path"), "{err}");
    // a sender before the receiver has one
    p.patch(&[(0, 2)], &receivers).unwrap();
}
