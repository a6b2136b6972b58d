//! Attribution adds up: on real models the accumulated and decomposed residual stream, the
//! per-head results, and the logit difference they are attributed to agree with the forward.

mod common;

use candlelens::metrics;
use candlelens::prelude::*;
use common::*;

const PET: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is";

fn check_attribution(m: &HookedTransformer, prompts: &[&str], answers: &[(&str, &str)]) {
    let tokens = m.to_tokens(prompts, None).unwrap();
    let pairs: Vec<(u32, u32)> = answers
        .iter()
        .map(|(c, i)| (m.to_single_token(c).unwrap(), m.to_single_token(i).unwrap()))
        .collect();
    let (logits, cache) = m.run_with_cache(&tokens, None).unwrap();
    let last = m.gather_last(&logits, &tokens).unwrap();
    let want = metrics::mean(&metrics::logit_diff(&last, &pairs).unwrap());
    let dirs = m.logit_diff_directions(&pairs).unwrap();
    // LayerNorm adds its bias after normalising, and b_U is added to the logits: constants the
    // components do not carry
    let bias_term = metrics::mean(&m.logit_diff_bias(&pairs).unwrap());
    let acc = cache.accumulated_resid(None, true, Pos::Last).unwrap();
    assert_eq!(acc.labels.len(), 2 * m.cfg.n_layers + 1);
    assert_eq!(acc.labels[0], "0_pre");
    assert_eq!(acc.labels[1], "0_mid");
    assert_eq!(acc.labels.last().unwrap(), "final_post");
    let lens = m.logit_attribution(&cache, &acc, &dirs).unwrap();
    let final_lens = lens.values.last().unwrap() + bias_term;
    assert!(
        (final_lens - want).abs() < 1e-3,
        "{}: logit lens end {final_lens} vs {want}",
        m.cfg.name
    );

    let dec = cache.decompose_resid(None, true, Pos::Last).unwrap();
    let attr = m.logit_attribution(&cache, &dec, &dirs).unwrap();
    let total: f32 = attr.values.iter().sum::<f32>() + bias_term;
    assert!(
        (total - want).abs() < 1e-3,
        "{}: decomposed sum {total} vs {want}",
        m.cfg.name
    );
    assert!(attr.note.is_none());

    let heads = cache.stack_head_results(m, None, Pos::All).unwrap();
    assert_eq!(heads.labels.len(), m.cfg.n_layers * m.cfg.n_heads);
    assert_eq!(heads.labels[m.cfg.n_heads + 1], "L1H1");
    for l in [0, m.cfg.n_layers - 1] {
        let h = m.cfg.n_heads;
        let sum = heads.stack.narrow(0, l * h, h).unwrap().sum(0).unwrap();
        let mut attn = cache.at(HookPoint::AttnOut(l)).unwrap().clone();
        if let Some(bo) = &m.weights.layers[l].b_o {
            attn = attn.broadcast_sub(bo).unwrap();
        }
        let d = max_abs(&to_vec(&sum), &to_vec(&attn));
        assert!(
            d < 1e-3,
            "{} layer {l}: heads sum to attn_out within {d}",
            m.cfg.name
        );
    }
}

#[test]
fn attribution_adds_up_on_llama_and_gemma3() {
    check_attribution(
        model("smollm2-135m"),
        &["The capital of France is the city of"],
        &[(" Paris", " London")],
    );
    check_attribution(
        model("gemma-3-270m"),
        &[PET, "Is Paris the capital of France?\n"],
        &[(" Peb", " Rachel"), ("Yes", "No")],
    );
}

#[test]
fn attribution_adds_up_with_layernorm_and_learned_positions() {
    let dir = fixture_path("tiny/gpt2");
    let m = HookedTransformer::from_pretrained(dir.to_str().unwrap()).unwrap();
    let v = m.tokenizer().vocab_size() as u32;
    let tokens = m.to_tokens("The pet of this family is", None).unwrap();
    let (logits, cache) = m.run_with_cache(&tokens, None).unwrap();
    let dec = cache.decompose_resid(None, true, Pos::Last).unwrap();
    assert_eq!(&dec.labels[..3], &["embed", "pos_embed", "0_attn_out"]);
    let pair = (5u32, v - 7);
    let dirs = m.logit_diff_directions(&[pair]).unwrap();
    let attr = m.logit_attribution(&cache, &dec, &dirs).unwrap();
    let last = m.gather_last(&logits, &tokens).unwrap();
    let want = metrics::logit_diff(&last, &[pair]).unwrap()[0];
    let bias = m.logit_diff_bias(&[pair]).unwrap();
    assert!(
        bias[0].abs() > 1e-3,
        "the tiny GPT-2's final LayerNorm has a bias"
    );
    let total: f32 = attr.values.iter().sum::<f32>() + bias[0];
    assert!((total - want).abs() < 1e-4, "{total} vs {want}");
}

#[test]
fn softcapped_models_say_attribution_is_not_exact() {
    let dir = fixture_path("tiny/gemma2");
    let m = HookedTransformer::from_pretrained(dir.to_str().unwrap()).unwrap();
    let tokens = m.to_tokens("The pet of this family is", None).unwrap();
    let (_, cache) = m.run_with_cache(&tokens, None).unwrap();
    let acc = cache.accumulated_resid(None, false, Pos::At(-1)).unwrap();
    let dirs = m.logit_diff_directions(&[(5, 6)]).unwrap();
    let attr = m.logit_attribution(&cache, &acc, &dirs).unwrap();
    assert!(attr.note.unwrap().contains("soft-caps"));
    // per-head results still sum to attn_out through the frozen post-norm
    let heads = cache.stack_head_results(&m, Some(1), Pos::All).unwrap();
    let sum = heads.stack.sum(0).unwrap();
    let attn = cache.at(HookPoint::AttnOut(0)).unwrap();
    assert!(max_abs(&to_vec(&sum), &to_vec(attn)) < 1e-4);
}

#[test]
fn test_prompt_reports_ranks_like_transformer_lens() {
    let m = model("gemma-3-270m");
    let t = m
        .test_prompt(
            "Is Paris the capital of France?\n",
            "Yes",
            &TestPromptOptions {
                prepend_space_to_answer: false,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        t.prompt_tokens,
        ["<bos>", "Is", " Paris", " the", " capital", " of", " France", "?", "\n"]
    );
    assert_eq!(t.answer_tokens, ["Yes"]);
    let tokens = m
        .to_tokens("Is Paris the capital of France?\n", None)
        .unwrap();
    let row = to_vec(&m.last_logits(&tokens).unwrap().i(0).unwrap());
    let yes = m.to_single_token("Yes").unwrap() as usize;
    let higher = row.iter().filter(|&&x| x > row[yes]).count();
    assert_eq!(t.answer[0].rank, higher);
    assert!((t.answer[0].logit - row[yes]).abs() < 1e-4);
    let probs: f32 = t.top_k[0].iter().map(|x| x.prob).sum();
    assert!(probs > 0.0 && probs <= 1.0001);
    assert!(t.top_k[0].windows(2).all(|w| w[0].logit >= w[1].logit));
    // the same list from one row of logits, with probabilities that are the row's softmax
    let last = m.last_logits(&tokens).unwrap().i(0).unwrap();
    let top = m.top_tokens(&last, 10).unwrap();
    assert_eq!(top.len(), 10);
    for (a, b) in top.iter().zip(&t.top_k[0]) {
        assert_eq!((a.rank, a.id, &a.token), (b.rank, b.id, &b.token));
        assert!((a.logit - b.logit).abs() < 1e-4 && (a.prob - b.prob).abs() < 1e-5);
    }
    let z: f64 = row.iter().map(|&x| ((x - top[0].logit) as f64).exp()).sum();
    assert!((top[0].prob as f64 - 1.0 / z).abs() < 1e-6);
    assert!(matches!(
        m.top_tokens(&m.last_logits(&tokens).unwrap(), 3),
        Err(LensError::Mismatch { .. })
    ));
    let text = t.to_string();
    assert!(
        text.starts_with("Tokenized prompt: [\"<bos>\", \"Is\", \" Paris\""),
        "{text}"
    );
    assert!(text.contains("Top 0th token. Logit:"), "{text}");
    assert!(
        text.contains("Ranks of the answer tokens: [(\"Yes\", "),
        "{text}"
    );
    // multi-token answers are scored token by token
    let t = m
        .test_prompt(
            "The capital of France is",
            "Paris, France",
            &TestPromptOptions {
                top_k: 3,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(t.answer.len(), t.answer_tokens.len());
    assert!(t.answer_tokens.len() >= 2);
}

#[test]
fn group_metrics_on_the_paris_question() {
    let m = model("gemma-3-270m");
    let yes: Vec<u32> = ["Yes", "Sure", "Correct"]
        .iter()
        .map(|t| m.to_single_token(t).unwrap())
        .collect();
    let no: Vec<u32> = ["No", "Wrong"]
        .iter()
        .map(|t| m.to_single_token(t).unwrap())
        .collect();
    let tokens = m
        .to_tokens("Is Paris the capital of France?\n", None)
        .unwrap();
    let last = m.last_logits(&tokens).unwrap();
    let g = TokenGroups {
        correct: yes.clone(),
        incorrect: no.clone(),
    };
    let ld = metrics::group_logit_diff(&last, std::slice::from_ref(&g)).unwrap()[0];
    let row = to_vec(&last.i(0).unwrap());
    let mean = |ids: &[u32]| ids.iter().map(|&i| row[i as usize]).sum::<f32>() / ids.len() as f32;
    assert!((ld - (mean(&yes) - mean(&no))).abs() < 1e-4);
    let pd = metrics::group_prob_diff(&last, std::slice::from_ref(&g)).unwrap()[0];
    assert!(pd.abs() <= 1.0);
    // the group direction attributes the same number through the logit lens
    let (_, cache) = m.run_with_cache(&tokens, None).unwrap();
    let acc = cache.accumulated_resid(None, false, Pos::Last).unwrap();
    let attr = m
        .logit_attribution(&cache, &acc, &m.group_diff_directions(&[g]).unwrap())
        .unwrap();
    assert!((attr.values.last().unwrap() - ld).abs() < 1e-3);
}

#[test]
fn bad_parameters_are_typed_errors() {
    let m = model("smollm2-135m");
    let err = m
        .test_prompt(
            "The capital of France is",
            "",
            &TestPromptOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, LensError::EmptyAnswer), "{err}");
    let tokens = m.to_tokens("1 2 3", None).unwrap();
    for opts in [
        GenerateOptions {
            temperature: f64::NAN,
            ..Default::default()
        },
        GenerateOptions {
            temperature: -1.0,
            ..Default::default()
        },
        GenerateOptions {
            max_new_tokens: usize::MAX,
            ..Default::default()
        },
    ] {
        let err = m.generate_tokens(&tokens, &opts).unwrap_err();
        assert!(matches!(err, LensError::BadParameter { .. }), "{err}");
    }
}

/// One answer pair for a batch of prompts scores every prompt with it, in the logit difference
/// and in every attribution alike (the directions were one for the whole batch, which the
/// attributions refused).
#[test]
fn one_answer_pair_serves_a_whole_batch() {
    use candlelens::analysis::LogitDiffRun;
    let m = tiny("llama");
    let rows = vec![vec![3, 4, 5, 6], vec![7, 8, 9, 10]];
    let run = |pairs: Vec<(u32, u32)>| {
        let t = Tokens::new(rows.clone(), m.cfg.pad_token_id).unwrap();
        LogitDiffRun::from_tokens(&m, t, pairs).unwrap()
    };
    let (one, both) = (run(vec![(11, 12)]), run(vec![(11, 12), (11, 12)]));
    assert_eq!(one.per_prompt, both.per_prompt);
    let (a, b) = (one.logit_lens(&m).unwrap(), both.logit_lens(&m).unwrap());
    assert_eq!(a.values, b.values);
    assert_eq!(
        one.per_layer(&m).unwrap().values,
        both.per_layer(&m).unwrap().values
    );
}
