//! TransformerLens's weight processing equals TransformerLens 3.9's on the same tiny
//! checkpoints (`scripts/make-tl-reference.py`): every processed weight, the logits, the
//! cached activations, and which steps apply to which model.

mod common;

use std::collections::HashMap;

use candlelens::prelude::*;
use candlelens::Processing;
use common::*;
use serde_json::Value;

const FAMILIES: [&str; 4] = ["gpt2", "llama", "qwen2", "gemma2"];

fn tl_file(family: &str, file: &str) -> HashMap<String, Tensor> {
    let path = fixture_path(&format!("tl/{family}/{file}"));
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn load(family: &str, processing: Processing) -> candlelens::Result<HookedTransformer> {
    let opts = LoadOptions {
        processing,
        ..Default::default()
    };
    HookedTransformer::from_pretrained_with(
        fixture_path(&format!("tiny/{family}")).to_str().unwrap(),
        &opts,
    )
}

/// Our weight under TransformerLens's name, in TransformerLens's shape (grouped keys and values
/// `_W_K` / `_b_K` as their `[n_kv_heads, ..]` originals); `None` for a norm the processed
/// model no longer has.
fn ours(m: &HookedTransformer, name: &str) -> Option<Tensor> {
    let cfg = &m.cfg;
    let kv = |t: Tensor| {
        // [n_heads, ..] repeated per query head -> one per key/value head
        let mut shape = t.dims().to_vec();
        shape[0] = cfg.n_kv_heads;
        t.reshape((cfg.n_kv_heads, cfg.kv_group(), ()))
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .reshape(shape)
            .unwrap()
    };
    let parts: Vec<&str> = name.split('.').collect();
    let t = match parts.as_slice() {
        ["embed", "W_E"] => {
            let w = m.W_E();
            match cfg.embed_scale {
                Some(s) => (w * s).unwrap(),
                None => w,
            }
        }
        ["pos_embed", "W_pos"] => m.W_pos().unwrap().narrow(0, 0, cfg.n_ctx).unwrap(),
        ["unembed", "W_U"] => m.W_U().unwrap(),
        ["unembed", "b_U"] => m.b_U().unwrap(),
        ["ln_final", "w"] => m.weights.ln_final.w.clone(),
        ["ln_final", "b"] => m.weights.ln_final.b.clone()?,
        ["blocks", l, rest @ ..] => {
            let l: usize = l.parse().unwrap();
            let lw = &m.weights.layers[l];
            let at = |t: Tensor| t.get(l).unwrap();
            match rest {
                ["attn", "W_Q"] => m.W_Q_at(l).unwrap(),
                ["attn", "W_K"] => m.W_K_at(l).unwrap(),
                ["attn", "W_V"] => m.W_V_at(l).unwrap(),
                ["attn", "_W_K"] => kv(m.W_K_at(l).unwrap()),
                ["attn", "_W_V"] => kv(m.W_V_at(l).unwrap()),
                ["attn", "W_O"] => m.W_O_at(l).unwrap(),
                ["attn", "b_Q"] => at(m.b_Q().unwrap()),
                ["attn", "b_K"] => at(m.b_K().unwrap()),
                ["attn", "b_V"] => at(m.b_V().unwrap()),
                ["attn", "_b_K"] => kv(at(m.b_K().unwrap())),
                ["attn", "_b_V"] => kv(at(m.b_V().unwrap())),
                ["attn", "b_O"] => at(m.b_O().unwrap()),
                ["mlp", "W_in"] => at(m.W_in().unwrap()),
                ["mlp", "W_gate"] => at(m.W_gate().unwrap()),
                ["mlp", "W_out"] => at(m.W_out().unwrap()),
                ["mlp", "b_in"] => at(m.b_in().unwrap()),
                ["mlp", "b_out"] => at(m.b_out().unwrap()),
                [ln, "w"] => norm(lw, ln)?.w.clone(),
                [ln, "b"] => norm(lw, ln)?.b.clone()?,
                other => panic!("no mapping for {other:?}"),
            }
        }
        other => panic!("no mapping for {other:?}"),
    };
    Some(t)
}

fn norm<'a>(
    lw: &'a candlelens::weights::LayerWeights,
    name: &str,
) -> Option<&'a candlelens::weights::NormWeights> {
    match name {
        "ln1" => lw.ln1.as_ref(),
        "ln2" => lw.ln2.as_ref(),
        "ln1_post" => lw.ln1_post.as_ref(),
        "ln2_post" => lw.ln2_post.as_ref(),
        other => panic!("unknown norm {other}"),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (to_vec(a), to_vec(b));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every tensor of a TransformerLens file against ours.
fn same_weights(family: &str, what: &str, m: &HookedTransformer, file: &str) {
    let tl = tl_file(family, file);
    assert!(!tl.is_empty() || file != "processed.safetensors");
    for (name, want) in &tl {
        let got = ours(m, name).unwrap_or_else(|| panic!("{family} {what}: no {name}"));
        let d = max_diff(&got, want);
        assert!(d < 1e-5, "{family} {what}: {name} differs by {d}");
    }
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(f32s).collect()
}

fn close(a: &[Vec<f32>], b: &Tensor, tol: f32, what: &str) {
    let b = b.to_dtype(DType::F32).unwrap();
    let flat: Vec<f32> = a.iter().flatten().copied().collect();
    let d = flat
        .iter()
        .zip(to_vec(&b))
        .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
        .fold(0.0, f32::max);
    // the fixture holds 6 significant digits
    assert!(d <= tol, "{what}: max |diff| / (1 + |x|) {d}");
}

#[test]
fn processed_weights_logits_and_caches_equal_transformer_lens() {
    for family in FAMILIES {
        let r = read_fixture(&format!("tl/{family}/reference.json"));
        let ids = u32s(&r["tokens"][0]);
        for (key, file, processing) in [
            ("unprocessed", "unprocessed.safetensors", Processing::NONE),
            (
                "processed",
                "processed.safetensors",
                Processing::transformer_lens_defaults(),
            ),
        ] {
            let m = load(family, processing).unwrap();
            same_weights(family, key, &m, file);
            let tokens = m.tokens_from_ids(ids.clone()).unwrap();
            let (logits, cache) = m.run_with_cache(&tokens, None).unwrap();
            let want = &r[key];
            close(
                &rows(&want["logits"]),
                &logits.get(0).unwrap(),
                1e-4,
                &format!("{family} {key} logits"),
            );
            let scale = cache.get("ln_final.hook_scale").unwrap().get(0).unwrap();
            close(
                &[f32s(&want["ln_final.hook_scale"])],
                &scale.flatten_all().unwrap(),
                1e-5,
                &format!("{family} {key} ln_final.hook_scale"),
            );
            let resid = cache
                .get("blocks.0.hook_resid_pre")
                .unwrap()
                .get(0)
                .unwrap();
            close(
                &rows(&want["blocks.0.hook_resid_pre"]),
                &resid,
                1e-5,
                &format!("{family} {key} resid_pre"),
            );
            let z = cache.get("blocks.1.attn.hook_z").unwrap().get(0).unwrap();
            let z = z.get(ids.len() - 1).unwrap();
            close(
                &rows(&want["blocks.1.attn.hook_z_last"]),
                &z,
                1e-5,
                &format!("{family} {key} hook_z"),
            );
        }
    }
}

#[test]
fn each_step_alone_equals_transformer_lens_and_applies_where_it_does() {
    for family in FAMILIES {
        let r = read_fixture(&format!("tl/{family}/reference.json"));
        let applied = &r["flags_applied"];
        let steps: [(&str, Processing); 4] = [
            (
                "fold_ln",
                Processing {
                    fold_ln: true,
                    ..Processing::NONE
                },
            ),
            (
                "center_writing_weights",
                Processing {
                    center_writing_weights: true,
                    ..Processing::NONE
                },
            ),
            (
                "center_unembed",
                Processing {
                    center_unembed: true,
                    ..Processing::NONE
                },
            ),
            (
                "fold_value_biases",
                Processing {
                    fold_value_biases: true,
                    ..Processing::NONE
                },
            ),
        ];
        let defaults = load(family, Processing::transformer_lens_defaults()).unwrap();
        for (name, p) in steps {
            let tl_changed = applied[name]["changed_anything"].as_bool().unwrap();
            // what TransformerLens's defaults do here, ours do
            let ours_applied = match name {
                "fold_ln" => defaults.cfg.processing.fold_ln,
                "center_writing_weights" => defaults.cfg.processing.center_writing_weights,
                "center_unembed" => defaults.cfg.processing.center_unembed,
                _ => defaults.cfg.processing.fold_value_biases,
            };
            assert_eq!(ours_applied, tl_changed, "{family} {name}");
            match load(family, p) {
                Ok(m) => {
                    assert!(
                        tl_changed,
                        "{family} {name}: TransformerLens changes nothing here"
                    );
                    same_weights(family, name, &m, &format!("{name}.safetensors"));
                }
                // asked for alone, a step the model cannot take is an error naming the fix
                Err(e) => {
                    assert!(!tl_changed, "{family} {name}: {e}");
                    assert!(matches!(e, LensError::Unsupported { .. }), "{e}");
                    assert!(e.to_string().contains(name), "{e}");
                }
            }
        }
    }
}

#[test]
fn processing_leaves_the_next_token_distribution_alone_on_every_family() {
    let steps = [
        Processing {
            fold_ln: true,
            ..Processing::NONE
        },
        Processing {
            center_writing_weights: true,
            ..Processing::NONE
        },
        Processing {
            center_unembed: true,
            ..Processing::NONE
        },
        Processing {
            fold_value_biases: true,
            ..Processing::NONE
        },
    ];
    for family in [
        "gpt2",
        "gpt_neo",
        "gptj",
        "neox",
        "phi",
        "llama",
        "mistral",
        "phi3",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "olmo2",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
    ] {
        let plain = load(family, Processing::NONE).unwrap();
        let tokens = plain
            .tokens_from_ids(vec![1, 5, 9, 17, 33, 2, 40, 8])
            .unwrap();
        let lp = |m: &HookedTransformer| {
            candle_nn::ops::log_softmax(&m.forward(&tokens).unwrap(), D::Minus1).unwrap()
        };
        let want = lp(&plain);
        // each step alone where the model can take it (a typed error where not), then all of
        // those together, then TransformerLens's defaults
        let mut all = Processing::NONE;
        let mut runs = Vec::new();
        for p in steps {
            match load(family, p) {
                Ok(m) => {
                    all.fold_ln |= p.fold_ln;
                    all.center_writing_weights |= p.center_writing_weights;
                    all.center_unembed |= p.center_unembed;
                    all.fold_value_biases |= p.fold_value_biases;
                    runs.push(m);
                }
                Err(LensError::Unsupported { .. }) => {}
                Err(e) => panic!("{family} {}: {e}", p.describe()),
            }
        }
        runs.push(load(family, all).unwrap());
        runs.push(load(family, Processing::transformer_lens_defaults()).unwrap());
        assert!(
            runs.last().unwrap().cfg.processing.fold_ln
                || family.ends_with("moe")
                || family == "mixtral",
            "{family}"
        );
        for m in &runs {
            let d = max_diff(&lp(m), &want);
            assert!(
                d < 1e-4,
                "{family} {}: log-probs moved by {d}",
                m.cfg.processing.describe()
            );
        }
    }
}

/// `(labels, values)` of a fixture's attribution.
fn attribution(v: &Value) -> (Vec<String>, Vec<f32>) {
    let labels = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    (labels, f32s(&v["values"]))
}

fn same_attribution(what: &str, got: &candlelens::analysis::LogitAttribution, want: &Value) {
    let (labels, values) = attribution(want);
    assert_eq!(got.labels, labels, "{what}");
    for ((l, g), w) in labels.iter().zip(&got.values).zip(&values) {
        assert!(
            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{what} {l}: {g} vs {w}"
        );
    }
}

#[test]
fn direct_logit_attribution_on_processed_weights_equals_transformer_lens() {
    use candlelens::analysis::LogitDiffRun;
    for family in FAMILIES {
        let r = read_fixture(&format!("tl/{family}/reference.json"));
        let ids = u32s(&r["tokens"][0]);
        let pair = (
            r["token_a"].as_u64().unwrap() as u32,
            r["token_b"].as_u64().unwrap() as u32,
        );
        let run = |p: Processing| {
            let m = load(family, p).unwrap();
            let tokens = m.tokens_from_ids(ids.clone()).unwrap();
            let run = LogitDiffRun::from_tokens(&m, tokens, vec![pair]).unwrap();
            (m, run)
        };
        let (m, processed) = run(Processing::transformer_lens_defaults());
        let want = &r["processed"];
        let ld = want["logit_diff"].as_f64().unwrap() as f32;
        assert!(
            (processed.logit_diff - ld).abs() < 1e-4,
            "{family}: {} vs {ld}",
            processed.logit_diff
        );
        let layers = processed.per_layer(&m).unwrap();
        same_attribution(
            &format!("{family} components"),
            &layers,
            &want["dla_components"],
        );
        // Gemma 2's heads: ours divide by the post-attention norm's cached scale, so that they
        // sum to hook_attn_out; TransformerLens's are z W_O alone
        if family != "gemma2" {
            let heads = processed.per_head(&m).unwrap();
            same_attribution(&format!("{family} heads"), &heads, &want["dla_heads"]);
        }
        // the components plus the biases the residual does not carry add up to the logit
        // difference (no softcap)
        if m.cfg.final_softcap.is_none() {
            let sum: f32 =
                layers.values.iter().sum::<f32>() + m.logit_diff_bias(&[pair]).unwrap()[0];
            assert!((sum - ld).abs() < 1e-4, "{family}: {sum} vs {ld}");
        }
        // unprocessed, our per-component numbers are the same (the final norm's weight is in
        // our directions, and its centring in apply_ln); TransformerLens's unprocessed ones
        // differ wherever the final norm has a weight
        let (m0, plain) = run(Processing::NONE);
        let layers0 = plain.per_layer(&m0).unwrap();
        same_attribution(
            &format!("{family} unprocessed components"),
            &layers0,
            &want["dla_components"],
        );
        let (_, tl_plain) = attribution(&r["unprocessed"]["dla_components"]);
        assert!(
            tl_plain
                .iter()
                .zip(&layers0.values)
                .any(|(a, b)| (a - b).abs() > 1e-3),
            "{family}: TransformerLens's unprocessed attribution was expected to differ"
        );
    }
}

#[test]
fn lens_dla_prints_transformer_lens_numbers_with_tl_defaults() {
    let r = read_fixture("tl/gpt2/reference.json");
    let ids: Vec<String> = u32s(&r["tokens"][0]).iter().map(u32::to_string).collect();
    let dir = fixture_path("tiny/gpt2");
    let m = load("gpt2", Processing::NONE).unwrap();
    let answer = |id: u32| m.to_string(&[id]).unwrap();
    let (a, b) = (answer(5), answer(9));
    let lens = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
            .args([
                "dla",
                "--model",
                dir.to_str().unwrap(),
                "--tokens",
                &ids.join(","),
            ])
            .args(["--answers", &a, &b])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            stderr,
        )
    };
    for (flag, key) in [
        ("--per-head", "dla_heads"),
        ("--per-layer", "dla_components"),
    ] {
        let (ok, stdout, stderr) = lens(&[flag, "--tl-defaults", "--json"]);
        assert!(ok, "{stderr}");
        let v: Value = serde_json::from_str(&stdout).unwrap();
        let (labels, values) = attribution(&r["processed"][key]);
        let got: Vec<String> = serde_json::from_value(v["labels"].clone()).unwrap();
        assert_eq!(got, labels);
        for (g, w) in f32s(&v["values"]).iter().zip(&values) {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{flag}: {g} vs {w}"
            );
        }
        let ld = r["processed"]["logit_diff"].as_f64().unwrap();
        assert!((v["logit_diff"].as_f64().unwrap() - ld).abs() < 1e-4);
    }
    // a step the model cannot take, asked for alone: a typed error with the fix
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
        .args([
            "dla",
            "--model",
            fixture_path("tiny/llama").to_str().unwrap(),
        ])
        .args([
            "--tokens",
            "1,5,9",
            "--answers",
            "a",
            "b",
            "--center-writing-weights",
        ])
        .output()
        .unwrap();
    let (ok, stderr) = (out.status.success(), String::from_utf8_lossy(&out.stderr));
    assert!(
        !ok && stderr.contains("center_writing_weights") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
