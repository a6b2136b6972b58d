//! Sparse autoencoders and transcoders: each SAELens architecture (and the pre-6 config, and
//! Gemma Scope's params.npz) loaded from its on-disk format gives the activations and
//! reconstructions numpy computes (`scripts/make-sae-reference.py`); spliced into the tiny
//! Llama, the error term leaves the logits exactly the model's, the reconstruction alone equals
//! putting `decode(encode(x))` in with a hook, and feature edits act; bad folders and
//! mismatched models are typed errors.

mod common;

use candlelens::prelude::*;
use candlelens::sae::splice::Splice;
use candlelens::sae::{Architecture, Sae};
use common::sae_fixture as sae;
use common::*;

fn rows(v: &serde_json::Value) -> Tensor {
    let r: Vec<Vec<f32>> = v.as_array().unwrap().iter().map(f32s).collect();
    let n = r.len();
    let d = r[0].len();
    Tensor::from_vec(r.concat(), (n, d), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn every_architecture_matches_numpy() {
    let fx = read_fixture("reference/sae.json");
    for (name, want_act) in [
        ("standard", Architecture::Relu),
        ("jumprelu", Architecture::JumpRelu),
        ("topk", Architecture::TopK(5)),
        ("topk_v5", Architecture::TopK(3)),
        ("transcoder", Architecture::JumpRelu),
    ] {
        let s = sae(name);
        assert_eq!(s.architecture, want_act, "{name}");
        let r = &fx["saes"][name];
        let x = rows(&fx[r["input"].as_str().unwrap()]);
        let code = s.encode(&x).unwrap();
        let recons = s.decode(&code.acts_post, &x).unwrap();
        for (what, got) in [
            ("acts_pre", &code.acts_pre),
            ("acts_post", &code.acts_post),
            ("recons", &recons),
        ] {
            let d = max_diff(got, &rows(&r[what]));
            assert!(d < 1e-4, "{name} {what}: {d}");
        }
        let l0 = code
            .acts_post
            .gt(0f32)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .sum(1)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (l0 - r["l0"].as_f64().unwrap() as f32).abs() < 1e-5,
            "{name} L0"
        );
    }
    // Gemma Scope's raw params.npz, read at a hook the caller names
    let s =
        Sae::load_gemma_scope(fixture_path("sae/gemma_scope"), "blocks.1.hook_resid_post").unwrap();
    let r = &fx["saes"]["gemma_scope"];
    let x = rows(&fx["x"]);
    let code = s.encode(&x).unwrap();
    assert!(max_diff(&code.acts_post, &rows(&r["acts_post"])) < 1e-4);
    assert!(max_diff(&s.decode(&code.acts_post, &x).unwrap(), &rows(&r["recons"])) < 1e-4);
    assert_eq!(s.hook, HookPoint::ResidPost(1));
    // the configs' hook points
    assert_eq!(sae("standard").hook, HookPoint::ResidPre(1));
    assert_eq!(sae("topk_v5").hook, HookPoint::ResidPost(0));
    let t = sae("transcoder");
    assert_eq!(
        (t.hook, t.hook_out),
        (HookPoint::Ln2Normalized(0), Some(HookPoint::MlpOut(0)))
    );
}

#[test]
fn spliced_with_the_error_term_the_model_is_unchanged() {
    let m = tiny("llama");
    let t = m
        .to_tokens(["The pet of this family is", "Is Paris"].as_slice(), None)
        .unwrap();
    let plain = m.forward(&t).unwrap();
    let (a, b, c) = (sae("standard"), sae("topk"), sae("transcoder"));
    let mut splices = [Splice::new(&a), Splice::new(&b), Splice::new(&c)];
    let (logits, cache) = m.run_with_saes(&t, &mut splices).unwrap();
    // bit for bit the run that reads the same points (a read norm output takes the composed
    // path rather than the fused kernel, ~1 ulp apart), and within rounding of the plain one
    let points = [a.hook, b.hook, c.hook, c.output_hook()].to_vec();
    let (observed, _) = m
        .run_with_cache(&t, Some(HookFilter::Points(points)))
        .unwrap();
    assert_eq!(max_diff(&logits, &observed), 0.0);
    assert!(max_diff(&logits, &plain) < 1e-5);
    // SAELens's names, recons + error = the activation
    for hook in [
        "blocks.1.hook_resid_pre",
        "blocks.1.hook_resid_mid",
        "blocks.0.hook_mlp_out",
    ] {
        let get = |w: &str| cache.get(&format!("{hook}.{w}")).unwrap().clone();
        let d = max_diff(
            &(get("hook_sae_recons") + get("hook_sae_error")).unwrap(),
            &get("hook_sae_output"),
        );
        assert!(d < 1e-5, "{hook}: {d}");
        assert_eq!(get("hook_sae_acts_post").dims(), &[2, t.max_len(), 48]);
    }
    assert!(matches!(
        cache.get("blocks.1.hook_resid_pre.hook_sae_nope"),
        Err(LensError::NotCached { .. })
    ));
}

#[test]
fn without_the_error_term_the_reconstruction_goes_on() {
    let m = tiny("llama");
    let t = m.to_tokens("The pet of this family is", None).unwrap();
    for name in ["standard", "jumprelu", "transcoder"] {
        let s = sae(name);
        let mut splices = [Splice::new(&s).error_term(false)];
        let (logits, _) = m.run_with_saes(&t, &mut splices).unwrap();
        // the same thing with a plain hook: the SAE's input recorded, its output replaced
        let x_in = std::cell::RefCell::new(None::<Tensor>);
        let mut hooks = Hooks::new();
        let sr = &s;
        hooks
            .add(&s.hook.to_string(), |act, _| {
                *x_in.borrow_mut() = Some(act.clone());
                if sr.is_transcoder() {
                    return Ok(None);
                }
                let code = sr.encode(act)?;
                Ok(Some(sr.decode(&code.acts_post, act)?))
            })
            .unwrap();
        if s.is_transcoder() {
            hooks
                .add(&s.output_hook().to_string(), |_, _| {
                    let x = x_in.borrow().clone().unwrap();
                    let code = sr.encode(&x)?;
                    Ok(Some(sr.decode(&code.acts_post, &x)?))
                })
                .unwrap();
        }
        let want = m.run_with_hooks(&t, &mut hooks).unwrap();
        drop(hooks);
        let d = max_diff(&logits, &want);
        assert!(d < 1e-5, "{name}: {d}");
        assert!(
            max_diff(&logits, &m.forward(&t).unwrap()) > 1e-4,
            "{name}: the reconstruction changed nothing"
        );
    }
}

/// Feature `f`'s activations at every position of a spliced run of the `standard` SAE.
fn feature_values(cache: &candlelens::sae::splice::SaeCache, f: usize) -> Vec<f32> {
    let acts = cache
        .get("blocks.1.hook_resid_pre.hook_sae_acts_post")
        .unwrap();
    acts.narrow(2, f, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn feature_edits_act_and_report_themselves() {
    let m = tiny("llama");
    let t = m.to_tokens("The pet of this family is", None).unwrap();
    let s = sae("standard");
    let (_, cache) = m.run_with_saes(&t, &mut [Splice::new(&s)]).unwrap();
    let acts = cache
        .get("blocks.1.hook_resid_pre.hook_sae_acts_post")
        .unwrap()
        .clone();
    // the most active feature, ablated
    let per_feature: Vec<f32> = acts.sum(1).unwrap().sum(0).unwrap().to_vec1().unwrap();
    let top = (0..per_feature.len())
        .max_by(|&a, &b| per_feature[a].total_cmp(&per_feature[b]))
        .unwrap();
    let (ablated, cache2) = m
        .run_with_saes(&t, &mut [Splice::new(&s).ablate(&[top])])
        .unwrap();
    let col = feature_values(&cache2, top);
    assert!(col.iter().all(|&v| v == 0.0));
    // with the error term on, the edit moves the run by exactly decode(edited) - decode(clean)
    let plain = m.forward(&t).unwrap();
    assert!(max_diff(&ablated, &plain) > 1e-5);
    let clamped = m
        .run_with_saes(&t, &mut [Splice::new(&s).clamp(top, 10.0)])
        .unwrap()
        .1;
    let col = feature_values(&clamped, top);
    assert!(col.iter().all(|&v| v == 10.0));
    assert!(matches!(
        m.run_with_saes(&t, &mut [Splice::new(&s).ablate(&[999])]),
        Err(LensError::OutOfRange { index: 999, .. })
    ));
}

#[test]
fn bad_folders_and_mismatched_models_are_typed_errors() {
    let dir = std::env::temp_dir().join(format!("candlelens-sae-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // no files
    assert!(matches!(
        Sae::load(&dir),
        Err(LensError::MissingFile { .. })
    ));
    // an architecture Candlelens does not run
    let src = fixture_path("sae/standard");
    std::fs::copy(
        src.join("sae_weights.safetensors"),
        dir.join("sae_weights.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("cfg.json")).unwrap();
    std::fs::write(
        dir.join("cfg.json"),
        cfg.replace("\"standard\"", "\"gated\""),
    )
    .unwrap();
    let e = Sae::load(&dir).unwrap_err();
    assert!(matches!(e, LensError::UnsupportedConfig { .. }), "{e}");
    assert!(e.to_string().contains("jumprelu"), "{e}");
    // a hook name that is not one
    std::fs::write(
        dir.join("cfg.json"),
        cfg.replace("blocks.1.hook_resid_pre", "blocks.1.hook_resid_prex"),
    )
    .unwrap();
    assert!(matches!(
        Sae::load(&dir),
        Err(LensError::UnknownHook { .. })
    ));
    // d_in in the config disagreeing with the weights
    std::fs::write(
        dir.join("cfg.json"),
        cfg.replace("\"d_in\": 64", "\"d_in\": 65"),
    )
    .unwrap();
    let e = Sae::load(&dir).unwrap_err();
    assert!(e.to_string().contains("d_in"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    // a point of another width than the SAE's (the MLP's hidden layer is 96 wide)
    let m = tiny("llama");
    let s = sae("standard");
    let mut wide = s.clone();
    wide.hook = HookPoint::MlpPost(0);
    let t = m.to_tokens("The pet", None).unwrap();
    let e = m.run_with_saes(&t, &mut [Splice::new(&wide)]).unwrap_err();
    assert!(matches!(e, LensError::Mismatch { .. }), "{e}");
    assert!(e.to_string().contains("96"), "{e}");
    // a layer the model does not have
    let mut far = s.clone();
    far.hook = HookPoint::ResidPre(7);
    assert!(matches!(
        m.run_with_saes(&t, &mut [Splice::new(&far)]),
        Err(LensError::LayerOutOfRange { .. })
    ));
}

#[test]
fn lens_sae_reports_sparsity_error_and_top_features() {
    let run = |extra: &[&str]| {
        let model = fixture_path("tiny/llama");
        let mut args = vec![
            "sae",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "The pet of this family is",
            "--json",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
            .args(args)
            .output()
            .unwrap()
    };
    let dir = fixture_path("sae/standard");
    let out = run(&["--sae", dir.to_str().unwrap(), "--top-k", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hook"], "blocks.1.hook_resid_pre");
    assert_eq!(v["d_sae"], 48);
    let top = v["top_features"].as_array().unwrap();
    assert!(!top.is_empty() && top.len() <= 4);
    let acts: Vec<f64> = top.iter().map(|f| f["act"].as_f64().unwrap()).collect();
    assert!(acts.windows(2).all(|w| w[0] >= w[1]) && acts[0] > 0.0);
    assert!(v["l0"].as_u64().unwrap() as usize >= top.len());
    assert!(v["recon_rel_error"].as_f64().unwrap().is_finite());
    // the same numbers as the library
    let m = tiny("llama");
    let t = m.to_tokens("The pet of this family is", None).unwrap();
    let s = sae("standard");
    let (_, cache) = m.run_with_saes(&t, &mut [Splice::new(&s)]).unwrap();
    let last = t.max_len() - 1;
    let acts_lib: Vec<f32> = cache
        .get("blocks.1.hook_resid_pre.hook_sae_acts_post")
        .unwrap()
        .i((0, last))
        .unwrap()
        .to_vec1()
        .unwrap();
    let f0 = top[0]["feature"].as_u64().unwrap() as usize;
    assert!((acts_lib[f0] as f64 - acts[0]).abs() < 1e-5);
    // Gemma Scope without --hook, and a missing folder: typed errors, non-zero exit
    for bad in [fixture_path("sae/gemma_scope"), fixture_path("sae/nope")] {
        let out = run(&["--sae", bad.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("file not found"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn feature_attribution_is_activation_times_the_finite_difference_slope() {
    let m = tiny("llama");
    let t = m
        .to_tokens(["The pet of this family is", "Is Paris"].as_slice(), None)
        .unwrap();
    let pairs = [(5u32, 9u32)];
    let metric = candlelens::metrics::logit_diff_grad_metric(&pairs);
    for name in ["standard", "topk", "transcoder"] {
        let s = sae(name);
        let fa = m.sae_feature_attribution(&t, &s, &metric).unwrap();
        let plain = candlelens::metrics::mean(
            &candlelens::metrics::logit_diff(&m.last_logits(&t).unwrap(), &pairs).unwrap(),
        );
        assert!(
            (fa.metric - plain).abs() < 1e-5,
            "{name}: the spliced run is not the model's"
        );
        let top = fa.top(3).unwrap();
        assert!(!top.is_empty());
        for c in top {
            // move that one feature at that one position by ±eps through a feature edit
            let eps = 1e-2f32;
            let moved = |e: f32| -> f32 {
                let mut sp = [Splice::new(&s).edit_features(move |acts| {
                    let mut v: Vec<f32> = acts.flatten_all()?.to_vec1()?;
                    let (_, p, d) = acts.dims3()?;
                    v[(c.batch * p + c.pos) * d + c.feature] += e;
                    Ok(Some(Tensor::from_vec(v, acts.shape(), acts.device())?))
                })];
                let (logits, _) = m.run_with_saes(&t, &mut sp).unwrap();
                candlelens::metrics::mean(
                    &candlelens::metrics::logit_diff(&m.gather_last(&logits, &t).unwrap(), &pairs)
                        .unwrap(),
                )
            };
            let slope = (moved(eps) - moved(-eps)) / (2.0 * eps);
            let want = c.act * slope;
            assert!(
                (c.score - want).abs() <= 1e-3 + 2e-2 * want.abs(),
                "{name} {c:?}: {} vs {want}",
                c.score
            );
        }
    }
}

#[test]
fn releases_resolve_by_name_with_suggestions() {
    use candlelens::sae::releases::{release_names, resolve};
    let (r, s) = resolve("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium").unwrap();
    assert_eq!(r.repo_id, "google/gemma-scope-2-270m-pt");
    assert_eq!(s.path, "resid_post/layer_12_width_16k_l0_medium");
    let (r, s) = resolve(
        "gemma-scope-2b-pt-res-canonical",
        "layer_12/width_16k/canonical",
    )
    .unwrap();
    assert_eq!(
        (r.repo_id.as_str(), s.path.as_str()),
        (
            "google/gemma-scope-2b-pt-res",
            "layer_12/width_16k/average_l0_82"
        )
    );
    assert!(release_names()
        .unwrap()
        .contains(&"gpt2-small-res-jb".to_string()));
    let e = resolve("gemma-scope-2-270m-pt-re", "x").unwrap_err();
    assert!(
        matches!(e, LensError::UnknownChoice { .. })
            && e.to_string().contains("gemma-scope-2-270m-pt-res"),
        "{e}"
    );
    let e = resolve("gpt2-small-res-jb", "blocks.8.hook_resid_prex").unwrap_err();
    assert!(e.to_string().contains("blocks.8.hook_resid_pre"), "{e}");
}

#[test]
fn a_release_loads_from_the_hub_cache_without_the_network() {
    // the HF cache as hf-hub lays it out, holding the SAELens folder of gpt2-small-res-jb's
    // blocks.8.hook_resid_pre (here: the tiny test SAE); the endpoint is unreachable
    let home = std::env::temp_dir().join(format!("candlelens-sae-hub-{}", std::process::id()));
    let repo = home.join("hub/models--jbloom--GPT2-Small-SAEs-Reformatted");
    let snap = repo.join("snapshots/0123456789abcdef/blocks.8.hook_resid_pre");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    for f in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(fixture_path("sae/standard").join(f), snap.join(f)).unwrap();
    }
    let model = fixture_path("tiny/llama");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
        .args([
            "sae",
            "--model",
            model.to_str().unwrap(),
            "--sae",
            "gpt2-small-res-jb/blocks.8.hook_resid_pre",
            "--prompt",
            "The pet",
            "--json",
        ])
        .env("HF_HOME", &home)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&home).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hook"], "blocks.1.hook_resid_pre");
    // the release says its SAEs were trained with center_writing_weights
    assert!(
        v["notes"].to_string().contains("center_writing_weights"),
        "{v}"
    );
}

#[test]
fn a_feature_view_shows_where_it_fires_and_what_it_writes() {
    use candlelens::sae::views::{top_features_table, FeatureView};
    let m = tiny("llama");
    let t = m
        .to_tokens(
            [
                "The pet of this family is",
                "Is Paris the capital of France",
                "1 2 3",
            ]
            .as_slice(),
            None,
        )
        .unwrap();
    let s = sae("standard");
    let (_, cache) = m.run_with_saes(&t, &mut [Splice::new(&s)]).unwrap();
    let acts = cache
        .get("blocks.1.hook_resid_pre.hook_sae_acts_post")
        .unwrap()
        .clone();
    let table = top_features_table(&acts, 0, 2, 5, "top features").unwrap();
    let html = table.to_html();
    // the strongest feature at prompt 0, position 2, from the cache itself
    let v: Vec<f32> = acts.i((0, 2)).unwrap().to_vec1().unwrap();
    let best = (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    assert!(html.contains(&format!("{:.4}", v[best])), "{html}");
    let view = FeatureView::build(&m, &s, &t, best, 4, 3).unwrap();
    assert!(!view.contexts.is_empty());
    assert!(view.contexts.windows(2).all(|w| w[0].act >= w[1].act));
    for c in &view.contexts {
        let a: f32 = acts
            .i((c.prompt, c.pos, best))
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((a - c.act).abs() < 1e-6 && (c.tokens[c.peak].1 - a).abs() < 1e-6);
    }
    assert_eq!(view.activations.len(), t.lengths().iter().sum::<usize>());
    // logit effects: W_dec[f] · W_U, from the weight views
    let wu = m.W_U().unwrap();
    let eff: Vec<f32> = s
        .w_dec
        .i(best)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .matmul(&wu)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let top = eff.iter().copied().fold(f32::MIN, f32::max);
    let low = eff.iter().copied().fold(f32::MAX, f32::min);
    assert!((view.promoted[0].1 - top).abs() < 1e-4 && (view.suppressed[0].1 - low).abs() < 1e-4);
    let html = view.to_html().unwrap();
    assert!(
        html.contains("<svg") && html.contains("rgba(255,140,0"),
        "{html}"
    );
    assert!(matches!(
        FeatureView::build(&m, &s, &t, 48, 4, 3),
        Err(LensError::OutOfRange { .. })
    ));
    assert!(matches!(
        top_features_table(&acts, 3, 0, 5, "x"),
        Err(LensError::OutOfRange { .. })
    ));
}

/// Activations built from a known sparse dictionary: 3 of 48 unit directions in 32 dimensions
/// per sample, with magnitudes in [0.5, 1.5].
fn planted(n: usize) -> Tensor {
    let mut rng = candlelens::util::pyrandom::PyRandom::seed(11);
    let (f, d) = (48usize, 32usize);
    let mut dict = vec![0f32; f * d];
    for row in dict.chunks_mut(d) {
        let v: Vec<f32> = (0..d).map(|_| rng.gauss() as f32).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (o, x) in row.iter_mut().zip(v) {
            *o = x / norm;
        }
    }
    let mut x = vec![0f32; n * d];
    for s in 0..n {
        for j in rng.sample(f, 3) {
            let a = 0.5 + rng.random() as f32;
            for c in 0..d {
                x[s * d + c] += a * dict[j * d + c];
            }
        }
    }
    Tensor::from_vec(x, (n, d), &Device::Cpu).unwrap()
}

#[test]
fn a_topk_sae_learns_a_planted_dictionary_and_round_trips_through_saelens_format() {
    use candlelens::sae::train::{train_topk, TrainConfig};
    let acts = planted(4096);
    let cfg = TrainConfig {
        d_sae: 64,
        k: 3,
        lr: 3e-3,
        steps: 1500,
        batch_size: 256,
        seed: 3,
    };
    let (s, report) = train_topk(&acts, HookPoint::ResidPost(0), &cfg).unwrap();
    let first = report.losses[..20].iter().sum::<f32>() / 20.0;
    let last = report.losses[report.losses.len() - 20..]
        .iter()
        .sum::<f32>()
        / 20.0;
    assert!(last < 0.2 * first, "loss {first} -> {last}");
    assert!(
        report.fvu < 0.15,
        "fraction of variance unexplained {}",
        report.fvu
    );
    eprintln!(
        "planted dictionary: loss {first:.4} -> {last:.5}, FVU {:.4}, {} dead of 64, {:.1} s",
        report.fvu, report.dead, report.seconds
    );
    let code = s.encode(&acts).unwrap();
    let l0 = code
        .acts_post
        .gt(0f32)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum(1)
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(l0 <= 3.0);
    // SAELens's format, back and forth
    let dir = std::env::temp_dir().join(format!("candlelens-sae-save-{}", std::process::id()));
    s.save(&dir).unwrap();
    assert!(
        s.save(&dir).is_err(),
        "an existing folder is not overwritten"
    );
    let back = Sae::load(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        (back.architecture, back.hook),
        (Architecture::TopK(3), HookPoint::ResidPost(0))
    );
    let again = back.encode(&acts).unwrap();
    assert_eq!(max_diff(&again.acts_post, &code.acts_post), 0.0);
    // bad settings
    for bad in [
        TrainConfig {
            k: 0,
            ..cfg.clone()
        },
        TrainConfig {
            k: 65,
            ..cfg.clone()
        },
        TrainConfig {
            lr: f64::NAN,
            ..cfg.clone()
        },
        TrainConfig {
            steps: 0,
            ..cfg.clone()
        },
    ] {
        assert!(matches!(
            train_topk(&acts, HookPoint::ResidPost(0), &bad),
            Err(LensError::BadParameter { .. })
        ));
    }
    assert!(matches!(
        train_topk(
            &acts.narrow(0, 0, 10).unwrap(),
            HookPoint::ResidPost(0),
            &cfg
        ),
        Err(LensError::TooFew { .. })
    ));
}

#[test]
fn spliced_runs_take_hooks_and_fill_the_models_cache() {
    let m = tiny("llama");
    let t = m
        .to_tokens(["The pet of this family is", "Is Paris"].as_slice(), None)
        .unwrap();
    let s = sae("standard");
    // the model's cache in the same run: before the SAE as the plain run, at its point what
    // goes on from it (the reconstruction, error term off)
    let (logits, saes) = m
        .run_with_saes(&t, &mut [Splice::new(&s).error_term(false)])
        .unwrap();
    let (logits2, saes2, cache) = m
        .run_with_cache_with_saes(&t, &mut [Splice::new(&s).error_term(false)], None)
        .unwrap();
    assert_eq!(max_diff(&logits, &logits2), 0.0);
    let out = "blocks.1.hook_resid_pre.hook_sae_output";
    assert_eq!(
        max_diff(saes.get(out).unwrap(), saes2.get(out).unwrap()),
        0.0
    );
    assert_eq!(
        max_diff(
            cache.get("blocks.1.hook_resid_pre").unwrap(),
            saes2.get(out).unwrap()
        ),
        0.0
    );
    let (_, plain) = m.run_with_cache(&t, None).unwrap();
    let before = "blocks.0.hook_resid_post";
    assert_eq!(
        max_diff(cache.get(before).unwrap(), plain.get(before).unwrap()),
        0.0
    );
    assert!(
        max_diff(
            cache.get("blocks.1.hook_resid_post").unwrap(),
            plain.get("blocks.1.hook_resid_post").unwrap()
        ) > 1e-3
    );
    // user hooks: at the SAE's point they act first, and the SAE reads what they return
    let double = |h: &mut Hooks| {
        h.add("blocks.1.hook_resid_pre", |a, _| Ok(Some((a * 2.0)?)))
            .unwrap();
    };
    let mut hooks = Hooks::new();
    double(&mut hooks);
    let (hooked, saes3) = m
        .run_with_hooks_with_saes(&t, &mut [Splice::new(&s)], &mut hooks)
        .unwrap();
    assert!(hooks.audit().all_fired());
    let input = saes3.get("blocks.1.hook_resid_pre.hook_sae_input").unwrap();
    let want = (plain.get("blocks.1.hook_resid_pre").unwrap() * 2.0).unwrap();
    assert!(max_diff(input, &want) < 1e-5);
    // error term on: the spliced model computes what the hooked model does
    let mut hooks = Hooks::new();
    double(&mut hooks);
    let direct = m.run_with_hooks(&t, &mut hooks).unwrap();
    assert!(max_diff(&hooked, &direct) < 1e-4);
    // a hook on a point the model never fires is refused before the run
    let mut bad = Hooks::new();
    bad.add("hook_pos_embed", |_, _| Ok(None)).unwrap();
    assert!(matches!(
        m.run_with_hooks_with_saes(&t, &mut [Splice::new(&s)], &mut bad),
        Err(LensError::HookNotOnModel { .. })
    ));
}
