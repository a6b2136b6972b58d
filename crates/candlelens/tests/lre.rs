//! Linear relational embeddings: the Jacobian against finite differences on every
//! architecture family, subject positions from the tokenizer, and the estimators on SmolLM2.

mod common;

use candlelens::lre::{self, Candidates, LreOperator, LreStates, ReadAt, Relation, Sample};
use candlelens::prelude::*;
use common::{fixture_path, max_abs, model, to_vec};

fn tiny(family: &str) -> HookedTransformer {
    let dir = fixture_path("tiny").join(family);
    let opts = LoadOptions::parse("cpu", "f32").unwrap();
    HookedTransformer::from_pretrained_with(dir.to_str().unwrap(), &opts).unwrap()
}

/// The last block's output at the last position after adding `delta` to
/// `blocks.{layer}.hook_resid_post` at `pos`.
fn z_with(
    m: &HookedTransformer,
    ids: &[u32],
    layer: usize,
    pos: usize,
    delta: &Tensor,
) -> Vec<f32> {
    let tokens = m.tokens_from_ids(ids.to_vec()).unwrap();
    let t = ids.len();
    let d = m.cfg.d_model;
    let add = Tensor::zeros((1, t, d), DType::F32, m.device())
        .unwrap()
        .slice_assign(
            &[0..1, pos..pos + 1, 0..d],
            &delta.reshape((1, 1, d)).unwrap(),
        )
        .unwrap();
    let mut hooks = Hooks::new();
    hooks
        .add(&format!("blocks.{layer}.hook_resid_post"), move |a, _| {
            Ok(Some((a + &add)?))
        })
        .unwrap();
    let last = format!("blocks.{}.hook_resid_post", m.cfg.n_layers - 1);
    let filter = HookFilter::Points(vec![HookPoint::parse(&last).unwrap()]);
    let (_, cache) = m
        .run_with_hooks_and_cache(&tokens, &mut hooks, Some(filter), LogitsAt::Last)
        .unwrap();
    common::to_vec(&cache.get(&last).unwrap().i((0, t - 1)).unwrap())
}

#[test]
fn jacobian_matches_finite_differences_on_every_family() {
    let ids = [3u32, 17, 42, 5, 99, 8, 21];
    for family in [
        "gpt2",
        "gptj",
        "gpt_neo",
        "neox",
        "phi",
        "llama",
        "mistral",
        "phi3",
        "olmo2",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
    ] {
        let m = tiny(family);
        let d = m.cfg.d_model;
        for (layer, pos) in [(0usize, 2usize), (0, 0), (m.cfg.n_layers - 2, 6)] {
            // few rows per pass, so that several backward passes and a ragged last one run
            let jac = lre::jacobian(&m, &ids, pos, layer, 7 * (ids.len() - pos)).unwrap();
            assert_eq!(jac.j.dims(), &[d, d]);
            let j: Vec<Vec<f32>> = jac.j.to_vec2().unwrap();
            let eps = 1e-2f32;
            for col in [0usize, 5, d / 2, d - 1] {
                let mut e = vec![0f32; d];
                e[col] = eps;
                let plus = Tensor::new(e.as_slice(), m.device()).unwrap();
                let minus = plus.neg().unwrap();
                let zp = z_with(&m, &ids, layer, pos, &plus);
                let zm = z_with(&m, &ids, layer, pos, &minus);
                let fd: Vec<f32> = zp
                    .iter()
                    .zip(&zm)
                    .map(|(a, b)| (a - b) / (2.0 * eps))
                    .collect();
                let ad: Vec<f32> = j.iter().map(|row| row[col]).collect();
                let scale = fd.iter().map(|x| x.abs()).fold(0.0f32, f32::max).max(1e-3);
                let err = common::max_abs(&ad, &fd);
                assert!(
                    err / scale < 2e-2,
                    "{family} layer {layer} pos {pos} column {col}: max |autograd - finite diff| {err} (scale {scale})"
                );
            }
            // b = z - J h reproduces z at the point the Jacobian was taken
            let z_plain = z_with(
                &m,
                &ids,
                layer,
                pos,
                &Tensor::zeros(d, DType::F32, m.device()).unwrap(),
            );
            assert!(
                common::max_abs(&common::to_vec(&jac.z), &z_plain) < 1e-4,
                "{family}"
            );
        }
    }
}

/// `uᵀ J` by reverse-mode autograd (candle's backward through the blocks, an independent
/// derivative): the whole prompt from `blocks.{layer+1}` on, `h` a variable at `pos`.
fn vjp_autograd(
    m: &HookedTransformer,
    ids: &[u32],
    layer: usize,
    pos: usize,
    u: &Tensor,
) -> Vec<f32> {
    let tokens = m.tokens_from_ids(ids.to_vec()).unwrap();
    let t = ids.len();
    let ctx = m.context(t).unwrap();
    let mut x = m.embed(&tokens, &mut candlelens::hooks::NoHooks).unwrap();
    for l in 0..=layer {
        x = m
            .run_block(l, x, &ctx, &mut candlelens::hooks::NoHooks)
            .unwrap();
    }
    let h = candle_core::Var::from_tensor(&x.i((0, pos)).unwrap()).unwrap();
    let mut parts = Vec::new();
    if pos > 0 {
        parts.push(x.narrow(1, 0, pos).unwrap());
    }
    parts.push(h.as_tensor().reshape((1, 1, m.cfg.d_model)).unwrap());
    if pos + 1 < t {
        parts.push(x.narrow(1, pos + 1, t - pos - 1).unwrap());
    }
    let mut x = Tensor::cat(&parts, 1).unwrap();
    for l in layer + 1..m.cfg.n_layers {
        x = m
            .run_block(l, x, &ctx, &mut candlelens::hooks::NoHooks)
            .unwrap();
    }
    let loss = (x.i((0, t - 1)).unwrap() * u).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    common::to_vec(grads.get(h.as_tensor()).unwrap())
}

#[test]
fn jacobian_equals_reverse_mode_autograd_on_every_family() {
    // the forward-mode Jacobian (Block::jvp) against candle's backward, to float rounding
    let ids = [3u32, 17, 42, 5, 99, 8, 21];
    for family in [
        "gpt2",
        "gptj",
        "gpt_neo",
        "neox",
        "phi",
        "llama",
        "mistral",
        "phi3",
        "olmo2",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
    ] {
        let m = tiny(family);
        let d = m.cfg.d_model;
        for (layer, pos) in [(0usize, 2usize), (0, 0), (m.cfg.n_layers - 2, 6)] {
            let jac = lre::jacobian(&m, &ids, pos, layer, 5 * (ids.len() - pos)).unwrap();
            let u = Tensor::randn(0f32, 1f32, d, m.device()).unwrap();
            let want = vjp_autograd(&m, &ids, layer, pos, &u);
            let got = common::to_vec(
                &u.unsqueeze(0)
                    .unwrap()
                    .matmul(&jac.j)
                    .unwrap()
                    .squeeze(0)
                    .unwrap(),
            );
            let scale = want
                .iter()
                .map(|x| x.abs())
                .fold(0.0f32, f32::max)
                .max(1e-6);
            let err = common::max_abs(&got, &want);
            assert!(
                err / scale < 1e-4,
                "{family} layer {layer} pos {pos}: max |uᵀJ (forward mode) - uᵀJ (autograd)| {err} (scale {scale})"
            );
        }
    }
}

#[test]
fn jacobian_rejects_bad_layer_and_position() {
    let m = tiny("llama");
    assert!(matches!(
        lre::jacobian(&m, &[1, 2, 3], 0, 9, 8),
        Err(LensError::LayerOutOfRange { .. })
    ));
    assert!(matches!(
        lre::jacobian(&m, &[1, 2, 3], 3, 0, 8),
        Err(LensError::PositionOutOfRange { .. })
    ));
}

fn relation() -> Relation {
    Relation::from_file(fixture_path("../../../../data/data_sample.json")).unwrap()
}

#[test]
fn subject_positions_follow_the_tokenizer() {
    for alias in ["smollm2-135m", "gemma-3-270m"] {
        let m = model(alias);
        for (template, subject, next) in [
            ("{} students are typically", "computer science", " students"),
            ("{} students are typically", "nursing", " students"),
            ("The capital of {} is", "South Korea", " is"),
        ] {
            let ids = m
                .to_tokens(template.replace("{}", subject).as_str(), None)
                .unwrap();
            let pos = lre::subject_last_token(m, template, subject).unwrap();
            let strs = m.ids_to_str_tokens(ids.row(0).unwrap()).unwrap();
            let bos = usize::from(
                m.tokenizer()
                    .decode(&ids.row(0).unwrap()[..1])
                    .unwrap()
                    .starts_with('<'),
            );
            let upto: String = strs[bos..=pos].concat();
            assert!(upto.ends_with(subject), "{alias}: {strs:?} at {pos}");
            assert_eq!(strs[pos + 1], next, "{alias}: {strs:?} at {pos}");
        }
    }
}

#[test]
fn the_dataset_and_the_source_split() {
    let rel = relation();
    assert_eq!(rel.samples.len(), 38);
    assert_eq!(rel.objects(), ["women", "men"]);
    for (s, o) in [
        ("engineering", "men"),
        ("nursing", "women"),
        ("computer science", "men"),
    ] {
        assert!(rel.samples.contains(&Sample {
            subject: s.into(),
            object: o.into()
        }));
    }
    let (train, test) = rel.split_like_source(42, 0.6);
    assert_eq!((train.len(), test.len()), (22, 16));
    // CPython's permutation for 38 items (scripts/make-lre-reference.py) starts 11, 33, 10
    assert_eq!(train[0], rel.samples[11]);
    assert_eq!(train[1], rel.samples[33]);
    assert_eq!(test[0], rel.samples[0]);
}

#[test]
fn estimators_on_smollm2() {
    let m = model("smollm2-135m");
    let rel = relation();
    let template = "{} students are typically";
    let (train, test) = rel.split_like_source(42, 0.6);
    let cands = Candidates::new(m, &rel.objects(), template).unwrap();
    let train = LreStates::collect(m, &train, template, &cands).unwrap();
    let test = LreStates::collect(m, &test, template, &cands).unwrap();
    assert_eq!(train.h_at(0).unwrap().dims(), &[22, m.cfg.d_model]);

    // least-norm regression interpolates its training data: every training subject decodes
    // to its own object (22 examples, 576 features)
    for layer in [3, 15, 29] {
        let op = LreOperator::fit_regression(m, &train, layer).unwrap();
        let fit = lre::evaluate(m, &op, &train).unwrap();
        assert_eq!(fit.correct(), (22, 22), "layer {layer}");
    }
    let sweep = lre::layer_sweep(m, &train, &test, 0..m.cfg.n_layers).unwrap();
    assert_eq!(sweep.len(), 30);

    // the last layer's output is linear in the subject state at the last layer up to the final
    // block: at layer L-2 the Jacobian operator (β = 1) must agree with the model on most subjects
    let l = m.cfg.n_layers - 2;
    let op = LreOperator::fit_jacobian(m, &train.items[..4], l, 1.0).unwrap();
    let e = lre::evaluate(m, &op, &test).unwrap();
    assert!(e.faithfulness() >= 0.75, "{}", e.table());
    let c = lre::causality(m, &op, &train, &test, 64).unwrap();
    assert_eq!(c.edits.len(), 16);
    assert!(c.efficacy() > c.random_efficacy(), "{}", c.table());
}

#[test]
fn typed_errors_for_bad_input() {
    let m = model("smollm2-135m");
    let dup = vec!["men".to_string(), "men's".to_string()];
    assert!(matches!(
        Candidates::new(m, &dup, "{} are"),
        Err(LensError::BadData { detail, .. }) if detail.contains("same token")
    ));
    let rel = relation();
    assert!(rel.template(Some("students are typically")).is_err());
    let cands = Candidates::new(m, &rel.objects(), "{} are").unwrap();
    let states = LreStates::collect(m, &rel.samples[..3], "{} are", &cands).unwrap();
    assert!(matches!(
        states.h_at(30),
        Err(LensError::LayerOutOfRange { .. })
    ));
    // a malformed sample is named, with its field, in both file formats
    let dir = std::env::temp_dir().join(format!("candlelens-lre-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, want) in [
        (
            "bare.json",
            r#"[{"subject": "a", "object": "b"}, {"subject": 5, "object": "c"}]"#,
            "sample 1",
        ),
        (
            "paper.json",
            r#"{"samples": [{"subject": "a", "object": "b"}, {"subject": "x"}]}"#,
            "missing field `object`",
        ),
        (
            "templates.json",
            r#"{"prompt_templates": "{} is", "samples": []}"#,
            "prompt_templates",
        ),
        ("neither.json", r#""just text""#, "expected ["),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let err = Relation::from_file(&p).unwrap_err();
        assert!(matches!(err, LensError::Json { .. }), "{name}: {err}");
        assert!(err.to_string().contains(want), "{name}: {err}");
        assert!(!err.to_string().contains("untagged"), "{name}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lens_lre_prints_the_documented_json() {
    let data = fixture_path("../../../../data/data_sample.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
        .args(["lre", "--model", "smollm2-135m", "--data"])
        .arg(&data)
        .args([
            "--template",
            "{} students are typically",
            "--layer",
            "9",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n"], 16);
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 16);
    for key in ["subject", "expected", "predicted", "model_top1"] {
        assert!(preds[0][key].is_string(), "{key}");
    }
    assert!(preds.iter().all(|p| p["correct"].is_boolean()));
    assert_eq!(v["read_at"], "subject-last");
    let agree = preds
        .iter()
        .filter(|p| p["predicted"] == p["model_top1"])
        .count();
    assert!((v["faithfulness"].as_f64().unwrap() - agree as f64 / 16.0).abs() < 1e-12);

    // a typo in the method is a typed error naming the choices, not a panic
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
        .args(["lre", "--model", "smollm2-135m", "--data"])
        .arg(&data)
        .args([
            "--template",
            "{} are",
            "--layer",
            "3",
            "--method",
            "jacobean",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("regression or jacobian"), "{err}");
}

#[test]
fn h_can_be_read_at_the_subject_or_the_prompt_end() {
    let m = model("smollm2-135m");
    let rel = relation();
    let template = "{} students are typically";
    let cands = Candidates::new(m, &rel.objects(), template).unwrap();
    let states = LreStates::collect(m, &rel.samples[..3], template, &cands).unwrap();
    assert_eq!(states.read_at, ReadAt::SubjectLast);
    let last = states.read_at(ReadAt::PromptLast);
    let n = m.cfg.n_layers;
    for (s, p) in states.items.iter().zip(&last.items) {
        assert_eq!(s.h_pos, s.subject_pos);
        assert_eq!(p.h_pos, p.ids.len() - 1);
        assert!(
            s.h_pos < p.h_pos,
            "the subject ends before \" students are typically\""
        );
        // at the prompt's end, the last block's output is z itself
        let d = max_abs(&to_vec(&p.h.i(n - 1).unwrap()), &to_vec(&p.z));
        assert!(d < 1e-6, "{d}");
        // a direct forward agrees on h at the subject's last token
        let tokens = m.to_tokens(s.prompt.as_str(), None).unwrap();
        let (_, cache) = m.run_with_cache(&tokens, None).unwrap();
        let want = cache
            .at(HookPoint::ResidPost(3))
            .unwrap()
            .i((0, s.subject_pos))
            .unwrap();
        let d = max_abs(&to_vec(&s.h.i(3).unwrap()), &to_vec(&want));
        let big = to_vec(&want).iter().fold(0f32, |a, v| a.max(v.abs()));
        // a few ulps of the largest entry (SmolLM2's residual reaches ~750, where one f32 ulp
        // is 6e-5): the two runs take different kernels for the same function
        assert!(
            d < 1e-4f32.max(4.0 * f32::EPSILON * big),
            "{d} (largest {big})"
        );
    }
    // switching back restores the subject's states
    let back = last.read_at(ReadAt::SubjectLast);
    assert!(max_abs(&to_vec(&back.items[0].h), &to_vec(&states.items[0].h)) < 1e-9);
    let all = states.concat(&states).unwrap();
    assert_eq!(all.len(), 6);
    assert!(states.concat(&last).is_err(), "mixed read positions");
}

#[test]
fn source_layers_keep_the_fraction_of_depth() {
    let m = model("smollm2-135m"); // 30 layers
    let modules = ["model.layers.5", "model.layers.10", "model.layers.15"];
    assert_eq!(
        lre::steps::source_layers(m, &modules, 18).unwrap(),
        vec![8, 16, 25]
    );
    assert_eq!(
        lre::steps::source_layers(m, &["model.layers.5"], 30).unwrap(),
        vec![5]
    );
    assert!(lre::steps::source_layers(m, &["lm_head"], 18).is_err());
}

#[test]
fn a_non_finite_beta_is_a_typed_error() {
    let m = model("smollm2-135m");
    let rel = relation();
    let template = "{} students are typically";
    let cands = Candidates::new(m, &rel.objects(), template).unwrap();
    let states = LreStates::collect(m, &rel.samples[..2], template, &cands).unwrap();
    for beta in [f32::NAN, f32::INFINITY, 0.0, -1.0] {
        let err = LreOperator::fit_jacobian(m, &states.items[..1], 3, beta).unwrap_err();
        assert!(
            matches!(err, LensError::BadParameter { .. }),
            "{beta}: {err}"
        );
    }
    let op = LreOperator::fit_jacobian(m, &states.items[..1], 3, 1.0).unwrap();
    assert!(lre::evaluate(m, &op.with_beta(f32::NAN), &states).is_err());
}

/// The source's evaluation (`lre.py` at be7929b: h at the prompt's last token, least-norm
/// regression onto `W_U[object]`, the top token over the vocabulary, `startswith`) equals the
/// same steps in Python with transformers and scikit-learn on the same GGUF
/// (`scripts/make-lre-source-reference.py`), subject by subject — a near-tie (a top-two logit
/// margin under 0.02) may fall either way.
#[test]
fn the_sources_evaluation_equals_its_code_rerun_in_python() {
    let fx = common::read_fixture("reference/lre-source-method.json");
    let m = model("gemma-3-270m");
    let rel = relation();
    let (train_s, test_s) = rel.split_like_source(42, 0.6);
    let subjects: Vec<&str> = test_s.iter().map(|s| s.subject.as_str()).collect();
    assert_eq!(serde_json::json!(subjects), fx["test_subjects"]);
    for e in fx["evaluations"].as_array().unwrap() {
        let (layer, template) = (
            e["layer"].as_u64().unwrap() as usize,
            e["template"].as_str().unwrap(),
        );
        let cands = Candidates::new(m, &rel.objects(), template).unwrap();
        let train = LreStates::collect(m, &train_s, template, &cands)
            .unwrap()
            .read_at(ReadAt::PromptLast);
        let test = LreStates::collect(m, &test_s, template, &cands)
            .unwrap()
            .read_at(ReadAt::PromptLast);
        let op = LreOperator::fit_regression(m, &train, layer).unwrap();
        let ours = lre::evaluate(m, &op, &test).unwrap();
        for (p, r) in ours.predictions.iter().zip(e["rows"].as_array().unwrap()) {
            assert_eq!(p.subject, r["subject"].as_str().unwrap());
            let (want, margin) = (
                r["predicted"].as_str().unwrap(),
                r["margin"].as_f64().unwrap(),
            );
            assert!(
                p.lre_vocab_top1.trim() == want || margin < 0.02,
                "layer {layer} {template:?}, {}: {:?} vs Python's {want:?} (margin {margin})",
                p.subject,
                p.lre_vocab_top1
            );
            assert_eq!(p.correct, lre::source_match(&p.lre_vocab_top1, &p.expected));
        }
    }
}

/// The source's printed tables (data/lre-source/gemma3-270m.json): its held-out subjects are
/// our split of its data file, its ✓ marks follow the rule `source_match` implements, its
/// printed scores count them, and `compare` counts agreement subject by subject.
#[test]
fn the_sources_printed_tables_follow_our_split_and_rule() {
    let table =
        lre::SourceTable::from_file(fixture_path("../../../../data/lre-source/gemma3-270m.json"))
            .unwrap();
    let (_, test) = relation().split_like_source(42, 0.6);
    let subjects: Vec<String> = test.iter().map(|s| s.subject.clone()).collect();
    assert_eq!(table.test_subjects, subjects);
    let source = lre::SourceNotebook::named("gemma3-270m").unwrap();
    for e in &table.evaluations {
        let marks = e.rows.iter().filter(|r| r.correct).count();
        assert_eq!(e.printed_score, format!("{marks}/16"));
        for r in &e.rows {
            assert_eq!(r.correct, lre::source_match(&r.predicted, &r.expected));
        }
    }
    let printed: Vec<&str> = table
        .evaluations
        .iter()
        .filter(|e| e.template == lre::TEMPLATE)
        .map(|e| e.printed_score.as_str())
        .collect();
    assert_eq!(printed.join(", "), source.held_out_counts);
    let alt = table.find(source.alt_module, lre::ALT_TEMPLATE).unwrap();
    assert_eq!(alt.printed_score, source.alt_count);
    // compare: the source's own rows as "ours" agree everywhere; one word changed, one less
    let eval = |rows: &[lre::SourceRow]| lre::LreEval {
        layer: 15,
        estimator: "regression".into(),
        predictions: rows
            .iter()
            .map(|r| lre::Prediction {
                subject: r.subject.clone(),
                expected: r.expected.clone(),
                predicted: r.predicted.clone(),
                model_top1: r.predicted.clone(),
                lre_vocab_top1: format!(" {}", r.predicted),
                model_vocab_top1: r.predicted.clone(),
                correct: r.correct,
            })
            .collect(),
    };
    let c = alt.compare(&eval(&alt.rows)).unwrap();
    assert_eq!(
        (c.agree, c.n, c.ours_correct, c.source_correct),
        (16, 16, 14, 14)
    );
    let mut flipped = alt.rows.clone();
    flipped[0].predicted = "men".into(); // nursing: women -> men
    let c = alt.compare(&eval(&flipped)).unwrap();
    assert_eq!((c.agree, c.ours_correct), (15, 13));
    assert!(alt.compare(&eval(&alt.rows[1..])).is_err());
}

/// LRE prompts are tokenized as the model's own (Hugging Face) tokenizer does it, as the source's
/// `tokenizer(text)` and the paper's code do: no BOS for GPT-2 (whose `to_tokens` default
/// follows TransformerLens and prepends one), Gemma's `<bos>`.
#[test]
fn lre_prompts_carry_bos_as_the_models_own_tokenizer_adds_it() {
    let samples = [Sample {
        subject: "nursing".into(),
        object: "women".into(),
    }];
    // a trailing space: the objects' first tokens are "w" / "m" even for the tiny GPT-2's
    // 300-token vocabulary
    let template = "{} students are typically ";
    let gpt2 = tiny("gpt2");
    assert!(gpt2.cfg.default_prepend_bos && !gpt2.cfg.hf_prepends_bos);
    let gemma = model("gemma-3-270m");
    assert!(gemma.cfg.default_prepend_bos && gemma.cfg.hf_prepends_bos);
    for (m, bos) in [(&gpt2, false), (&**gemma, true)] {
        let cands =
            Candidates::new(m, &["women".to_string(), "men".to_string()], template).unwrap();
        let s = LreStates::collect(m, &samples, template, &cands).unwrap();
        let ids = &s.items[0].ids;
        let plain = m
            .to_tokens("nursing students are typically ", Some(bos))
            .unwrap();
        assert_eq!(ids.as_slice(), plain.row(0).unwrap(), "{}", m.cfg.name);
        // the subject's last token is read in the same tokenization
        let word = m
            .ids_to_str_tokens(&ids[..=s.items[0].subject_pos])
            .unwrap();
        assert!(word.concat().ends_with("nursing"), "{word:?}");
    }
}
