//! Padded batches: every prompt of a batch of prompts of different lengths, padded on the right
//! or on the left, gives the logits and cached activations it gives alone (≤ 1e-4 of their
//! scale) on every family and on the embedded models — the mask keeps real tokens from reading
//! pads, and left-padded prompts count their positions from their first token (rotary and
//! learned positions alike). Per-prompt positions (`Pos::At`, `Pos::Last`, `last_logits`) read
//! each prompt's own tokens.

mod common;

use candlelens::analysis::Pos;
use candlelens::prelude::*;
use candlelens::tokens::Padding;
use common::*;

const PROMPTS: [&str; 3] = [
    "The pet of this family is",
    "Is Paris the capital of France? Answer with one word:",
    "Hi",
];

/// `|a − b|` at most `tol` of `b`'s scale (its largest magnitude, at least 1).
fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    let (a, b) = (to_vec(a), to_vec(b));
    let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
    let d = max_abs(&a, &b);
    assert!(d <= tol * scale, "{what}: {d} (scale {scale})");
}

fn check(m: &HookedTransformer, padding: Padding) {
    let batch = m
        .to_tokens_padded(PROMPTS.as_slice(), None, padding)
        .unwrap();
    assert!(!batch.is_rectangular(), "the prompts must differ in length");
    let (logits, cache) = m.run_with_cache(&batch, None).unwrap();
    let last_layer = m.cfg.n_layers - 1;
    let points = [
        "blocks.0.hook_resid_post".to_string(),
        format!("blocks.{last_layer}.hook_resid_post"),
        format!("blocks.{last_layer}.hook_mlp_out"),
        format!("blocks.{last_layer}.attn.hook_z"),
    ];
    let last = m.last_logits(&batch).unwrap();
    let at_last = cache
        .accumulated_resid(None, false, Pos::At(-1))
        .unwrap()
        .stack;
    let via_last = cache
        .accumulated_resid(None, false, Pos::Last)
        .unwrap()
        .stack;
    close(&at_last, &via_last, 0.0, "Pos::At(-1) is Pos::Last");
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let what = |s: &str| format!("{} {padding:?} prompt {i} {s}", m.cfg.architecture);
        let alone = m.to_tokens(*prompt, None).unwrap();
        let (l1, c1) = m.run_with_cache(&alone, None).unwrap();
        let real = batch.real_positions(i).unwrap();
        let (start, n) = (real.start, real.len());
        let rows = |t: &Tensor| t.i(i).unwrap().narrow(0, start, n).unwrap();
        close(&rows(&logits), &l1.i(0).unwrap(), 1e-4, &what("logits"));
        close(
            &last.i(i).unwrap(),
            &m.last_logits(&alone).unwrap().i(0).unwrap(),
            1e-4,
            &what("last logits"),
        );
        for p in &points {
            close(
                &rows(cache.get(p).unwrap()),
                &c1.get(p).unwrap().i(0).unwrap(),
                1e-4,
                &what(p),
            );
        }
        // the pattern over the prompt's own keys; no weight on a pad
        let pat = cache
            .get("blocks.0.attn.hook_pattern")
            .unwrap()
            .i(i)
            .unwrap();
        let own = pat
            .narrow(1, start, n)
            .unwrap()
            .narrow(2, start, n)
            .unwrap();
        close(
            &own,
            &c1.get("blocks.0.attn.hook_pattern").unwrap().i(0).unwrap(),
            1e-4,
            &what("pattern"),
        );
        let mass: Vec<f32> = to_vec(&own.sum(2).unwrap());
        assert!(
            mass.iter().all(|s| (s - 1.0).abs() < 1e-4),
            "{}: attention leaks to pads: {mass:?}",
            what("pattern")
        );
        // the per-prompt position reads the prompt's own last token
        close(
            &at_last.i((.., i)).unwrap(),
            &c1.accumulated_resid(None, false, Pos::At(-1))
                .unwrap()
                .stack
                .i((.., 0))
                .unwrap(),
            1e-4,
            &what("Pos::At(-1)"),
        );
    }
    assert!(
        to_vec(&logits).iter().all(|x| x.is_finite()),
        "pads stay finite"
    );
}

macro_rules! padding_tests {
    ($($name:ident => $family:literal,)*) => {$(
        #[test]
        fn $name() {
            let m = tiny($family);
            check(&m, Padding::Right);
            check(&m, Padding::Left);
        }
    )*};
}

padding_tests! {
    gpt2_pads => "gpt2",
    gptj_pads => "gptj",
    neox_pads => "neox",
    llama_pads => "llama",
    mistral_pads => "mistral",
    gpt_neo_pads => "gpt_neo",
    phi_pads => "phi",
    phi3_pads => "phi3",
    olmo2_pads => "olmo2",
    mixtral_pads => "mixtral",
    qwen2_moe_pads => "qwen2_moe",
    qwen3_moe_pads => "qwen3_moe",
    qwen2_pads => "qwen2",
    qwen3_pads => "qwen3",
    gemma_pads => "gemma",
    gemma2_pads => "gemma2",
    gemma3_pads => "gemma3",
}

#[test]
fn the_embedded_models_pad_both_ways() {
    for alias in ["smollm2-135m", "gemma-3-270m"] {
        let m = model(alias);
        check(m, Padding::Right);
        check(m, Padding::Left);
    }
}

#[test]
fn left_padding_ends_every_prompt_at_the_last_position() {
    let m = model("smollm2-135m");
    let t = m
        .to_tokens_padded(PROMPTS.as_slice(), None, Padding::Left)
        .unwrap();
    assert!(t.last_positions().iter().all(|&p| p == t.max_len() - 1));
    let labels = m.position_labels(&t, 2).unwrap();
    assert_eq!(labels.len(), t.max_len());
    assert!(labels[0].starts_with("pad_"));
}

#[test]
fn lens_run_reads_each_prompt_at_its_own_last_token() {
    let dir = fixture_path("tiny/llama");
    let file = std::env::temp_dir().join(format!("candlelens-prompts-{}.txt", std::process::id()));
    std::fs::write(&file, PROMPTS.join("\n")).unwrap();
    let run = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
            .args([
                "run",
                "--model",
                dir.to_str().unwrap(),
                "--top-k",
                "3",
                "--json",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let file_arg = file.to_str().unwrap();
    for padding in ["left", "right"] {
        let batch = run(&["--prompts", file_arg, "--padding", padding]);
        let prompts = batch["prompts"].as_array().unwrap();
        assert_eq!(prompts.len(), PROMPTS.len());
        for (i, p) in PROMPTS.iter().enumerate() {
            let alone = run(&["--prompt", p]);
            assert_eq!(prompts[i]["token_ids"], alone["token_ids"], "{padding} {i}");
            let (a, b) = (&prompts[i]["top_k"], &alone["prompts"][0]["top_k"]);
            for k in 0..3 {
                assert_eq!(a[k]["id"], b[k]["id"], "{padding} prompt {i} rank {k}");
                let d = a[k]["logit"].as_f64().unwrap() - b[k]["logit"].as_f64().unwrap();
                assert!(d.abs() < 1e-4, "{padding} prompt {i}: {d}");
            }
        }
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
fn token_positions_and_str_tokens_per_prompt() {
    use candlelens::model::TokenMatch;
    let m = model("smollm2-135m");
    let prompts = [
        "When Mary and John went to the store, John gave a drink to",
        "Then John and Mary",
    ];
    for padding in [Padding::Right, Padding::Left] {
        let t = m
            .to_tokens_padded(prompts.as_slice(), None, padding)
            .unwrap();
        let strs = m.tokens_to_str_tokens(&t).unwrap();
        assert_eq!(strs.len(), 2);
        let first = m
            .get_token_position(" John", &t, TokenMatch::First)
            .unwrap();
        let last = m.get_token_position(" John", &t, TokenMatch::Last).unwrap();
        for b in 0..2 {
            let offset = t.offsets()[b];
            assert_eq!(strs[b][first[b] - offset], " John");
            assert_eq!(strs[b][last[b] - offset], " John");
        }
        assert!(
            last[0] > first[0],
            "{padding:?}: two Johns in the first prompt"
        );
        let err = m
            .get_token_position(" Paris", &t, TokenMatch::First)
            .unwrap_err();
        assert!(err.to_string().contains("prompt 0"), "{err}");
    }
    // a pad id outside the vocabulary is named, not a raw index error
    let t = Tokens::with_padding(vec![vec![1, 2, 3], vec![4]], 1 << 30, Padding::Left).unwrap();
    let err = m.forward(&t).unwrap_err();
    assert!(matches!(err, LensError::TokenOutOfRange { .. }), "{err}");
}
