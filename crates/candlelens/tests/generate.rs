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
}
