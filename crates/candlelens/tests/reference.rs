//! The forward pass against Hugging Face transformers on the two embedded models: identical
//! token ids, top-20 logits within 1e-3, every resid_pre within 1e-4 relative L2, the layer-0
//! attention pattern within 1e-5 (fixtures from `scripts/make-reference.py`).

mod common;

use candlelens::prelude::*;
use common::*;

fn check_model(alias: &'static str) {
    let fx = read_fixture(&format!("reference/{alias}.json"));
    let model = model(alias);
    let (mut worst_logit, mut worst_resid, mut worst_pattern) = (0f32, 0f64, 0f32);
    for p in fx["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let ids = u32s(&p["token_ids"]);
        let tokens = model.tokens_from_ids(ids.clone()).unwrap();
        let filter = HookFilter::Predicate(Box::new(|hp| {
            matches!(
                hp,
                HookPoint::ResidPre(_) | HookPoint::Pattern(0) | HookPoint::LnFinalNormalized
            )
        }));
        let (logits, cache) = model.run_with_cache(&tokens, Some(filter)).unwrap();
        let last = ids.len() - 1;
        let row = to_vec(&logits.i((0, last)).unwrap());

        // top-20 raw logits at the final position
        let top = p["top_k"].as_array().unwrap();
        let want: Vec<f32> = top
            .iter()
            .map(|t| t["logit"].as_f64().unwrap() as f32)
            .collect();
        let got: Vec<f32> = top
            .iter()
            .map(|t| row[t["id"].as_u64().unwrap() as usize])
            .collect();
        let d = max_abs(&got, &want);
        assert!(d <= 1e-3, "{alias} {text:?}: top-20 logits differ by {d}");
        worst_logit = worst_logit.max(d);
        let argmax = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(
            argmax as u64,
            top[0]["id"].as_u64().unwrap(),
            "{alias} {text:?}: top-1"
        );
        let lse = {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            m + row.iter().map(|x| (*x as f64 - m).exp()).sum::<f64>().ln()
        };
        let want_lse = p["logsumexp_last"].as_f64().unwrap();
        assert!(
            (lse - want_lse).abs() <= 1e-3,
            "{alias} {text:?}: logsumexp {lse} vs {want_lse}"
        );

        // residual stream entering every block, last position
        for (l, want) in p["resid_pre"].as_array().unwrap().iter().enumerate() {
            let got = to_vec(
                &cache
                    .at(HookPoint::ResidPre(l))
                    .unwrap()
                    .i((0, last))
                    .unwrap(),
            );
            let e = rel_l2(&got, &f32s(want));
            assert!(e <= 1e-4, "{alias} {text:?}: resid_pre {l} rel err {e}");
            worst_resid = worst_resid.max(e);
        }
        let got = to_vec(
            &cache
                .at(HookPoint::LnFinalNormalized)
                .unwrap()
                .i((0, last))
                .unwrap(),
        );
        let e = rel_l2(&got, &f32s(&p["final_normed"]));
        assert!(e <= 1e-4, "{alias} {text:?}: ln_final rel err {e}");

        // layer-0 attention pattern [head, q, k]
        if let Some(pat) = p.get("attn_pattern_layer0").filter(|v| !v.is_null()) {
            let want: Vec<f32> = pat
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|h| h.as_array().unwrap().iter().flat_map(f32s))
                .collect();
            let got = to_vec(&cache.at(HookPoint::Pattern(0)).unwrap().i(0).unwrap());
            let d = max_abs(&got, &want);
            assert!(
                d <= 1e-5,
                "{alias} {text:?}: layer-0 pattern differs by {d}"
            );
            worst_pattern = worst_pattern.max(d);
        }

        if let Some(loss) = p.get("loss").and_then(|v| v.as_f64()) {
            let got = model.loss(&tokens).unwrap() as f64;
            assert!(
                (got - loss).abs() <= 1e-4,
                "{alias} {text:?}: loss {got} vs {loss}"
            );
        }
    }
    eprintln!(
        "{alias}: max |dlogit| {worst_logit:.2e}, max resid rel err {worst_resid:.2e}, max pattern diff {worst_pattern:.2e}"
    );
}

fn check_tokenizer(alias: &'static str) {
    let fx = read_fixture(&format!("reference/{alias}.json"));
    let model = model(alias);
    for p in fx["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let got = model.to_tokens(text, None).unwrap();
        assert_eq!(
            got.row(0).unwrap(),
            u32s(&p["token_ids"]).as_slice(),
            "{alias}: {text:?}"
        );
    }
    for c in fx["tokenizer_cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let ids = model.tokenizer().encode(text).unwrap();
        assert_eq!(ids, u32s(&c["ids_no_special"]), "{alias}: {text:?}");
        if !ids.is_empty() {
            let with = model.tokenizer().encode_with_bos(text, None).unwrap();
            assert_eq!(
                with,
                u32s(&c["ids"]),
                "{alias} (default special tokens): {text:?}"
            );
        }
        let decoded = model.to_string(&ids).unwrap();
        assert_eq!(
            decoded,
            c["decoded"].as_str().unwrap(),
            "{alias} decode: {text:?}"
        );
    }
}

#[test]
fn smollm2_matches_transformers() {
    check_model("smollm2-135m");
}

#[test]
fn gemma3_matches_transformers() {
    check_model("gemma-3-270m");
}

#[test]
fn smollm2_tokenizer_matches_transformers() {
    check_tokenizer("smollm2-135m");
}

#[test]
fn gemma3_tokenizer_matches_transformers() {
    check_tokenizer("gemma-3-270m");
}
