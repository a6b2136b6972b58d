//! Generation with the KV cache equals generation by re-running the whole sequence each step.

mod common;

use candlelens::prelude::*;
use common::*;

fn naive_greedy(m: &HookedTransformer, ids: &[u32], n: usize) -> Vec<u32> {
    let mut seq = ids.to_vec();
    let mut new = Vec::new();
    for _ in 0..n {
        let logits = m
            .last_logits(&m.tokens_from_ids(seq.clone()).unwrap())
            .unwrap();
        let row = to_vec(&logits.i(0).unwrap());
        let next = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        seq.push(next);
        new.push(next);
    }
    new
}

fn check(m: &HookedTransformer, prompt: &str, n: usize) {
    let tokens = m.to_tokens(prompt, None).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: n,
        stop_at_eos: false,
        ..Default::default()
    };
    let cached = m.generate_tokens(&tokens, &opts).unwrap().remove(0);
    assert_eq!(
        cached,
        naive_greedy(m, tokens.row(0).unwrap(), n),
        "{}: {prompt}",
        m.cfg.name
    );
}

#[test]
fn kv_cache_greedy_equals_full_recompute() {
    check(model("smollm2-135m"), "The capital of France is", 8);
    check(model("gemma-3-270m"), "The capital of France is", 6);
    // learned positions, sliding windows shorter than the text, partial interleaved rotary,
    // partial rotate-half rotary with a norm per parallel branch
    for family in [
        "gpt2",
        "gemma3",
        "gemma2",
        "gptj",
        "neox",
        "mistral",
        "gpt_neo",
        "phi",
        "phi3",
        "olmo2",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
    ] {
        let dir = fixture_path(&format!("tiny/{family}"));
        let m = HookedTransformer::from_pretrained(dir.to_str().unwrap()).unwrap();
        check(&m, "The pet of this family is", 12);
    }
}

#[test]
fn sampling_is_seeded_and_text_decodes() {
    let m = model("smollm2-135m");
    let opts = GenerateOptions {
        max_new_tokens: 8,
        temperature: 0.8,
        top_k: Some(20),
        top_p: Some(0.9),
        seed: 7,
        stop_at_eos: false,
    };
    let a = m.generate("Once upon a time", &opts).unwrap();
    let b = m.generate("Once upon a time", &opts).unwrap();
    assert_eq!(a, b);
    assert!(!a.is_empty());
    let greedy = m
        .generate("The capital of France is", &GenerateOptions::default())
        .unwrap();
    assert!(greedy.contains("Paris"), "{greedy}");
    let err = m
        .generate(
            "hi",
            &GenerateOptions {
                max_new_tokens: 100_000,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, LensError::BadParameter { .. }), "{err}");
    assert!(err.to_string().contains("new tokens fit"), "{err}");
    for bad in [
        GenerateOptions {
            top_p: Some(0.0),
            ..Default::default()
        },
        GenerateOptions {
            top_k: Some(0),
            ..Default::default()
        },
        GenerateOptions {
            temperature: f64::NAN,
            ..Default::default()
        },
    ] {
        let err = m.generate("hi", &bad).unwrap_err();
        assert!(matches!(err, LensError::BadParameter { .. }), "{err}");
    }
}

/// Prompts of different lengths generated as one (left-padded) batch continue as each does
/// alone, greedy and sampled; a prompt's sample does not depend on its place in the batch.
#[test]
fn a_batch_generates_what_each_prompt_generates_alone() {
    let prompts = [
        "The pet of this family is",
        "Hi",
        "Is Paris the capital of France?",
    ];
    let sampled = GenerateOptions {
        max_new_tokens: 6,
        temperature: 0.9,
        top_k: Some(40),
        top_p: Some(0.95),
        seed: 11,
        stop_at_eos: false,
    };
    let greedy = GenerateOptions {
        max_new_tokens: 6,
        stop_at_eos: false,
        ..Default::default()
    };
    for family in ["gpt2", "llama", "gemma2", "neox", "qwen3_moe"] {
        let m = tiny(family);
        for opts in [&greedy, &sampled] {
            let batch = m.to_tokens(prompts.as_slice(), None).unwrap();
            let together = m.generate_tokens(&batch, opts).unwrap();
            for (i, p) in prompts.iter().enumerate() {
                let alone = m
                    .generate_tokens(&m.to_tokens(*p, None).unwrap(), opts)
                    .unwrap();
                assert_eq!(
                    together[i], alone[0],
                    "{family} prompt {i} (t = {})",
                    opts.temperature
                );
            }
            let reversed: Vec<&str> = prompts.iter().rev().copied().collect();
            let swapped = m
                .generate_tokens(&m.to_tokens(reversed.as_slice(), None).unwrap(), opts)
                .unwrap();
            assert_eq!(
                swapped[2], together[0],
                "{family}: the place in the batch matters"
            );
        }
    }
}

/// A hook fires on the prompt pass and on every new token: steering the residual stream at
/// every position while generating gives what re-running the whole steered sequence each step
/// gives, and the hook sees each step's position.
#[test]
fn hooks_steer_generation_and_see_each_position() {
    for family in ["gpt2", "llama", "gemma3"] {
        let m = tiny(family);
        let d = m.cfg.d_model;
        let v = Tensor::randn(0f32, 50., d, m.device()).unwrap();
        let steer = |v: Tensor| move |act: &Tensor, _: &HookPoint| Ok(Some(act.broadcast_add(&v)?));
        let tokens = m.to_tokens("The pet of this family is", None).unwrap();
        let opts = GenerateOptions {
            max_new_tokens: 5,
            stop_at_eos: false,
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut hooks = Hooks::new();
        hooks
            .add("blocks.1.hook_resid_pre", steer(v.clone()))
            .unwrap();
        hooks
            .add_with_context("blocks.0.hook_resid_pre", |act, _, ctx| {
                seen.push((ctx.start(), act.dim(1)?, ctx.position(0, act.dim(1)? - 1)?));
                Ok(None)
            })
            .unwrap();
        let cached = m
            .generate_tokens_with(&tokens, &opts, &mut hooks)
            .unwrap()
            .remove(0);
        drop(hooks);
        // the same hook on the whole sequence, re-run each step
        let mut seq = tokens.row(0).unwrap().to_vec();
        let mut naive = Vec::new();
        for _ in 0..opts.max_new_tokens {
            let mut hooks = Hooks::new();
            hooks
                .add("blocks.1.hook_resid_pre", steer(v.clone()))
                .unwrap();
            let t = m.tokens_from_ids(seq.clone()).unwrap();
            let logits = m.run_with_hooks(&t, &mut hooks).unwrap();
            let row = to_vec(&logits.i((0, seq.len() - 1)).unwrap());
            let next = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32;
            seq.push(next);
            naive.push(next);
        }
        assert_eq!(cached, naive, "{family}");
        let plain = m.generate_tokens(&tokens, &opts).unwrap().remove(0);
        assert_ne!(cached, plain, "{family}: the steering changes nothing");
        let n = tokens.max_len();
        assert_eq!(seen[0], (0, n, Some(n - 1)), "{family}: the prompt pass");
        for (k, s) in seen.iter().enumerate().skip(1) {
            assert_eq!(*s, (n + k - 1, 1, Some(n + k - 1)), "{family}: step {k}");
        }
    }
}

#[test]
fn a_hook_the_model_never_fires_is_refused_before_generating() {
    // a rotary model has no learned positions; a 2-layer model has no block 5
    let m = tiny("llama");
    let tokens = m.to_tokens("The pet", None).unwrap();
    for (name, not_on_model) in [("hook_pos_embed", true), ("blocks.5.hook_resid_pre", false)] {
        let mut hooks = Hooks::new();
        hooks.add(name, |_, _| Ok(None)).unwrap();
        let err = m
            .generate_tokens_with(&tokens, &GenerateOptions::default(), &mut hooks)
            .unwrap_err();
        let typed = if not_on_model {
            matches!(err, LensError::HookNotOnModel { .. })
        } else {
            matches!(err, LensError::LayerOutOfRange { .. })
        };
        assert!(typed, "{name}: {err}");
    }
}

#[test]
fn lens_generate_prints_what_the_library_generates() {
    let dir = fixture_path("tiny/llama");
    let m = tiny("llama");
    let lens = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
            .args([
                "generate",
                "--model",
                dir.to_str().unwrap(),
                "--tokens",
                "1,5,9,17",
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = lens(&[
        "--max-new-tokens",
        "6",
        "--ignore-eos",
        "--temperature",
        "0.9",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 6,
        temperature: 0.9,
        top_p: Some(0.9),
        seed: 3,
        stop_at_eos: false,
        ..Default::default()
    };
    let tokens = m.tokens_from_ids(vec![1, 5, 9, 17]).unwrap();
    let new = m.generate_tokens(&tokens, &opts).unwrap().remove(0);
    let mut want = vec![1u32, 5, 9, 17];
    want.extend(&new);
    let got: Vec<u32> = serde_json::from_value(v["token_ids"].clone()).unwrap();
    assert_eq!(got, want);
    assert_eq!(v["text"].as_str().unwrap(), m.to_string(&new).unwrap());
    // bad options: a typed error naming the fix, not a panic
    let (ok, _, stderr) = lens(&["--top-p", "2"]);
    assert!(
        !ok && stderr.contains("top_p") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn left_padded_batches_and_steered_generation_equal_hugging_face() {
    // scripts/make-generation-reference.py: transformers' generate on a left-padded batch,
    // plain and with a forward hook adding v to block 0's output at every position
    let fx = read_fixture("reference/generation.json");
    let families = fx["families"].as_object().unwrap();
    assert!(families.len() >= 6, "{:?}", fx["skipped"]);
    for (family, r) in families {
        let m = tiny(family);
        let lp = &r["left_padded"];
        let rows: Vec<Vec<u32>> = lp["rows"].as_array().unwrap().iter().map(u32s).collect();
        let pad = lp["pad_id"].as_u64().unwrap() as u32;
        let tokens = Tokens::with_padding(rows, pad, candlelens::tokens::Padding::Left).unwrap();
        let padded: Vec<Vec<u32>> = lp["padded"].as_array().unwrap().iter().map(u32s).collect();
        let ours: Vec<Vec<u32>> = tokens.to_tensor(&Device::Cpu).unwrap().to_vec2().unwrap();
        assert_eq!(ours, padded, "{family}: the padding itself");
        let last = m.last_logits(&tokens).unwrap();
        for (b, want) in lp["last_logits"].as_array().unwrap().iter().enumerate() {
            let got = to_vec(&last.i(b).unwrap());
            let d = got
                .iter()
                .zip(f32s(want))
                .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
                .fold(0f32, f32::max);
            assert!(d < 1e-4, "{family} prompt {b}: last logits differ by {d}");
        }
        let opts = GenerateOptions {
            max_new_tokens: 8,
            stop_at_eos: false,
            ..Default::default()
        };
        let ids = |v: &serde_json::Value| -> Vec<Vec<u32>> {
            v["new_ids"].as_array().unwrap().iter().map(u32s).collect()
        };
        assert_eq!(
            m.generate_tokens(&tokens, &opts).unwrap(),
            ids(&r["greedy"]),
            "{family}: greedy"
        );
        let v = Tensor::new(f32s(&r["steered"]["v"]), m.device()).unwrap();
        let mut hooks = Hooks::new();
        hooks
            .add("blocks.0.hook_resid_post", move |a, _| {
                Ok(Some(a.broadcast_add(&v)?))
            })
            .unwrap();
        let steered = m.generate_tokens_with(&tokens, &opts, &mut hooks).unwrap();
        assert_eq!(steered, ids(&r["steered"]), "{family}: steered");
    }
}

#[test]
fn a_hook_asking_for_a_prompt_or_position_that_is_not_there_gets_a_typed_error() {
    let m = tiny("llama");
    let tokens = m
        .to_tokens(["The pet of this family is", "Is Paris"].as_slice(), None)
        .unwrap();
    for (row, pos) in [(2usize, -1i64), (1, 40), (0, -100)] {
        let mut hooks = Hooks::new();
        hooks
            .add_with_context("blocks.0.hook_resid_pre", move |_, _, ctx| {
                ctx.index_of(row, pos)?;
                Ok(None)
            })
            .unwrap();
        let err = m.run_with_hooks(&tokens, &mut hooks).unwrap_err();
        assert!(
            matches!(
                err,
                LensError::Mismatch { .. } | LensError::PositionOutOfRange { .. }
            ),
            "({row}, {pos}): {err}"
        );
    }
    // in generation, earlier positions are not on a step's axis: None, not an error
    let mut nones = 0;
    let mut hooks = Hooks::new();
    hooks
        .add_with_context("blocks.0.hook_resid_pre", |_, _, ctx| {
            if ctx.start() > 0 && ctx.index_of(0, 0)?.is_none() {
                nones += 1;
            }
            Ok(None)
        })
        .unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 3,
        stop_at_eos: false,
        ..Default::default()
    };
    m.generate_tokens_with(&tokens, &opts, &mut hooks).unwrap();
    drop(hooks);
    assert_eq!(nones, 2);
}
