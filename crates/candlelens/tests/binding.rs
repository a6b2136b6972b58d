//! The entity-binding module: the source's lists and prompts, seeded sampling equal to
//! CPython's, positions from the tokens (and a typed error when an entry is not a token of its
//! own), mean vectors against `run_with_cache`, and interventions that change `resid_post` by
//! exactly the binding vectors at the chosen positions and nowhere else. The tiny random Llama
//! checkpoint (`tests/fixtures/tiny/llama`, a 300-token BPE) runs most of them; the last test
//! needs the embedded model (`scripts/fetch-models`).

mod common;

use candlelens::binding::{
    self, BindingBatch, BindingLists, BindingMeans, BindingPositions, BindingVectors, Intervention,
    PyRandom, Role, Task,
};
use candlelens::prelude::*;
use common::*;

fn tiny() -> HookedTransformer {
    let dir = fixture_path("tiny/llama");
    HookedTransformer::from_pretrained(dir.to_str().unwrap()).unwrap()
}

fn lists() -> BindingLists {
    BindingLists::from_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/entity_binding/lists.json"
    ))
    .unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Single letters are single tokens, with and without a space, in the tiny BPE.
fn tiny_batch(model: &HookedTransformer, task: Task, n: usize, seed: u64) -> BindingBatch {
    let names = strings(&["F", "P", "R"]);
    let (attrs, answers) = match task {
        Task::Capital => (
            strings(&["a", "b", "s", "t"]),
            Some(strings(&[" t", " s", " b", " a"])),
        ),
        Task::Fruit => (strings(&[" a", " b", " s", " t"]), None),
    };
    let mut rng = PyRandom::seed(seed);
    let prompts =
        binding::sample_prompts(&mut rng, n, &names, &attrs, task, answers.as_deref(), 2).unwrap();
    BindingBatch::new(model, prompts).unwrap()
}

#[test]
fn the_source_lists() {
    let l = lists();
    assert_eq!(
        (
            l.names.len(),
            l.countries.len(),
            l.capitals.len(),
            l.fruits.len()
        ),
        (50, 50, 50, 34)
    );
    assert_eq!(l.names.iter().filter(|n| *n == "Sage").count(), 2);
    assert_eq!(
        (l.countries[24].as_str(), l.capitals[24].as_str()),
        ("Peru", " Lima")
    );
    assert_eq!(l.capitals[6], " Buenos Aires");
    assert_eq!(l.fruits[0], " orange");
}

#[test]
fn sampling_is_the_source_get_prompts_after_python_random_seed() {
    // Printed by CPython 3.11 running the source's get_prompts after random.seed(0):
    // get_prompts(3, names[:12], countries[:15], get_prompt_capital, capitals[:15], 2), then
    // get_prompts(3, names, fruits, get_prompt_fruit, None, 2) (the set branch of
    // random.sample), then get_prompts(2, names[:8], countries[:8], ..., capitals[:8], 3).
    let l = lists();
    let mut rng = PyRandom::seed(0);
    let a = binding::sample_prompts(
        &mut rng,
        3,
        &l.names[..12],
        &l.countries[..15],
        Task::Capital,
        Some(&l.capitals[..15]),
        2,
    )
    .unwrap();
    let b =
        binding::sample_prompts(&mut rng, 3, &l.names, &l.fruits, Task::Fruit, None, 2).unwrap();
    let c = binding::sample_prompts(
        &mut rng,
        2,
        &l.names[..8],
        &l.countries[..8],
        Task::Capital,
        Some(&l.capitals[..8]),
        3,
    )
    .unwrap();
    assert_eq!(
        a[0].text.text,
        "Answer the question based on the context below. Keep the answer short.\nContext: Maya lives in the capital city ofThailand.\nSage lives in the capital city ofSweden.\nQuestion: Which city does Maya live in?\nAnswer: Maya lives in the city of"
    );
    let answers = |v: &[binding::BindingPrompt]| -> Vec<(String, String)> {
        v.iter()
            .map(|p| (p.correct.clone(), p.incorrect.clone()))
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(x, y)| (x.to_string(), y.to_string()))
            .collect()
    };
    assert_eq!(
        answers(&a),
        pairs(&[
            (" Bangkok", " Stockholm"),
            (" New Delhi", " Buenos Aires"),
            (" Nairobi", " Ottawa")
        ])
    );
    assert_eq!(
        b[0].text.text,
        "Answer the question based on the context below. Keep the answer short.\nContext: Drake likes eating the mango. Sage likes eating the grape\nrespectively.\nQuestion: What food does Sage like?\nAnswer: Sage likes the"
    );
    assert_eq!(
        answers(&b),
        pairs(&[
            (" grape", " mango"),
            (" papaya", " quinoa"),
            (" pear", " banana")
        ])
    );
    assert_eq!(b[2].entities, strings(&["Felix", "Joy"]));
    assert_eq!(c[1].entities, strings(&["Maya", "Leo", "Finn"]));
    assert_eq!(c[1].subject, 2);
    // capital of the incorrect answer " Stockholm" is Sweden's: pair 1
    assert_eq!(
        (c[1].other, c[1].attributes[c[1].other].as_str()),
        (1, "Sweden")
    );
    assert_eq!(
        answers(&c),
        pairs(&[(" Canberra", " Bangkok"), (" Rabat", " Stockholm")])
    );

    // the same seed, the same prompts; another seed, others
    let again = binding::sample_prompts(
        &mut PyRandom::seed(0),
        3,
        &l.names[..12],
        &l.countries[..15],
        Task::Capital,
        Some(&l.capitals[..15]),
        2,
    )
    .unwrap();
    assert_eq!(again, a);
    let other = binding::sample_prompts(
        &mut PyRandom::seed(1),
        3,
        &l.names[..12],
        &l.countries[..15],
        Task::Capital,
        Some(&l.capitals[..15]),
        2,
    )
    .unwrap();
    assert_ne!(other, a);
    assert!(
        binding::sample_prompts(&mut rng, 1, &l.names[..1], &l.fruits, Task::Fruit, None, 2)
            .is_err()
    );
}

#[test]
fn one_token_filter_checks_both_spellings() {
    let model = tiny();
    // "of" and " of" are one token each; "Is" is, " Is" is not; "Leo" is not; " a" is
    // (an entry with a leading space is not checked without it)
    let col = strings(&["of", "Is", "Leo", " a"]);
    assert_eq!(
        binding::one_token_rows(&model, &[&col]).unwrap(),
        vec![0, 3]
    );
    // aligned columns: a row stays only if every column's entry passes
    let other = strings(&[" Leo", " b", " s", " t"]);
    assert_eq!(
        binding::one_token_rows(&model, &[&col, &other]).unwrap(),
        vec![3]
    );
    assert!(binding::one_token_rows(&model, &[&col, &other[..2]]).is_err());
}

#[test]
fn positions_are_found_from_the_tokens() {
    let model = tiny();
    for task in [Task::Capital, Task::Fruit] {
        let batch = tiny_batch(&model, task, 6, 3);
        for (i, (p, pos)) in batch.prompts.iter().zip(&batch.positions).enumerate() {
            let strs = model
                .ids_to_str_tokens(batch.tokens.row(i).unwrap())
                .unwrap();
            for k in 0..2 {
                assert_eq!(
                    strs[pos.entities[k]].trim(),
                    p.entities[k],
                    "{task:?} prompt {i}"
                );
                assert_eq!(
                    strs[pos.attributes[k]].trim(),
                    p.attributes[k].trim(),
                    "{task:?} {i}"
                );
            }
            assert!(pos.entities[0] < pos.attributes[0]);
            assert!(pos.attributes[0] < pos.entities[1]);
            assert!(pos.entities[1] < pos.attributes[1]);
        }
        let d = batch.describe_positions(&model, 0).unwrap();
        assert!(d.starts_with("E_0 ") && d.contains("| A_1 "), "{d}");
    }
    // by hand: the tiny tokenizer prepends BOS; "Context: F lives ... ofa.\nR lives ... ofb."
    let p = Task::Capital
        .prompt("R", &strings(&["F", "R"]), &strings(&["a", "b"]))
        .unwrap();
    let prompt = binding::BindingPrompt {
        task: Task::Capital,
        text: p.clone(),
        entities: strings(&["F", "R"]),
        attributes: strings(&["a", "b"]),
        subject: 1,
        other: 0,
        correct: " b".into(),
        incorrect: " a".into(),
    };
    let pos = binding::find_positions(&model, &prompt, 0, None).unwrap();
    let ids = model.to_tokens(p.text.as_str(), None).unwrap();
    let strs = model.ids_to_str_tokens(ids.row(0).unwrap()).unwrap();
    let want_e0 = strs.iter().position(|s| s == " F").unwrap();
    assert_eq!(strs[want_e0 - 1], ":");
    assert_eq!(
        pos,
        BindingPositions {
            entities: vec![want_e0, pos.entities[1]],
            attributes: pos.attributes.clone()
        }
    );
    assert_eq!(strs[pos.entities[1] - 1], "\n");
    assert_eq!(strs[pos.attributes[0] - 1], " of"); // " ofa" -> " of" + "a"
                                                    // without BOS everything moves one to the left
    let no_bos = binding::find_positions(&model, &prompt, 0, Some(false)).unwrap();
    assert_eq!(no_bos.entities[0] + 1, pos.entities[0]);
}

#[test]
fn an_entry_that_is_not_its_own_token_is_a_typed_error() {
    let model = tiny();
    let mut rng = PyRandom::seed(0);
    let names = strings(&["Leo", "Dean"]); // several tokens each in the tiny BPE
    let prompts = binding::sample_prompts(
        &mut rng,
        2,
        &names,
        &strings(&[" a", " b"]),
        Task::Fruit,
        None,
        2,
    )
    .unwrap();
    match BindingBatch::new(&model, prompts) {
        Err(LensError::NotOneToken {
            what: role,
            text: entry,
            prompt,
            tokens,
            ..
        }) => {
            assert_eq!(role, "entity E_0");
            assert!(entry == "Leo" || entry == "Dean");
            assert_eq!(prompt, 0);
            assert!(tokens.len() > 1, "{tokens:?}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a split entity must be an error"),
    }
}

#[test]
fn means_match_the_cache_and_the_clean_evaluation() {
    let model = tiny();
    let batch = tiny_batch(&model, Task::Capital, 8, 5);
    let (means, clean) = BindingMeans::collect(&model, &batch).unwrap();
    let n_layers = model.cfg.n_layers;
    assert_eq!(means.entity.dims(), &[2, n_layers, model.cfg.d_model]);
    let filter = HookFilter::suffix("hook_resid_post").unwrap();
    let (logits, cache) = model.run_with_cache(&batch.tokens, Some(filter)).unwrap();
    for l in 0..n_layers {
        let resid = cache.at(HookPoint::ResidPost(l)).unwrap();
        for k in 0..2 {
            for (role, got) in [
                (Role::Entity, &means.entity),
                (Role::Attribute, &means.attribute),
            ] {
                let mut sum = vec![0f32; model.cfg.d_model];
                for (b, pos) in batch.positions.iter().enumerate() {
                    let p = match role {
                        Role::Entity => pos.entities[k],
                        Role::Attribute => pos.attributes[k],
                    };
                    for (s, x) in sum.iter_mut().zip(to_vec(&resid.i((b, p)).unwrap())) {
                        *s += x;
                    }
                }
                let want: Vec<f32> = sum.iter().map(|s| s / batch.len() as f32).collect();
                let d = max_abs(&to_vec(&got.i((k, l)).unwrap()), &want);
                assert!(d < 1e-5, "layer {l} {role:?} {k}: {d}");
            }
        }
    }
    let v = means.vectors().unwrap();
    let want = (means.entity.i(0).unwrap() - means.entity.i(1).unwrap()).unwrap();
    assert_eq!(to_vec(&v.entity), to_vec(&want));
    // the clean evaluation is the evaluation of the plain forward's final logits
    let last = model.gather_last(&logits, &batch.tokens).unwrap();
    let again = binding::evaluate_logits(&last, &batch.answers).unwrap();
    assert_eq!(clean.predictions, again.predictions);
    assert!(max_abs(&clean.per_prompt, &again.per_prompt) < 1e-4);
    // by hand
    let rows: Vec<Vec<f32>> = last.to_vec2().unwrap();
    let hits = rows
        .iter()
        .zip(&batch.answers)
        .filter(|(r, (c, _))| {
            let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            r[*c as usize] == m
        })
        .count();
    assert_eq!(clean.accuracy, hits as f32 / batch.len() as f32);
}

#[test]
fn interventions_add_exactly_the_vectors_at_the_chosen_positions() {
    let model = tiny();
    let batch = tiny_batch(&model, Task::Fruit, 5, 7);
    let (means, _) =
        BindingMeans::collect(&model, &tiny_batch(&model, Task::Capital, 8, 5)).unwrap();
    let v = means.vectors().unwrap();
    let n_layers = model.cfg.n_layers;
    for iv in [
        Intervention::subtract(),
        Intervention::swap_entities(),
        Intervention::swap_both(),
    ] {
        // record each resid_post before the intervention's hook; the cache sees it after
        let mut before: Vec<Option<Tensor>> = vec![None; n_layers];
        let cache = {
            let mut hooks = Hooks::new();
            let slots = &mut before;
            hooks.add_filter(HookFilter::suffix("hook_resid_post").unwrap(), |act, hp| {
                slots[hp.layer().unwrap()] = Some(act.clone());
                Ok(None)
            });
            iv.add_to(&mut hooks, &model, &v, &batch).unwrap();
            let filter = HookFilter::suffix("hook_resid_post").unwrap();
            model
                .run_with_hooks_and_cache(&batch.tokens, &mut hooks, Some(filter), LogitsAt::Last)
                .unwrap()
                .1
        };
        for (l, pre) in before.iter().enumerate() {
            let pre = pre.as_ref().unwrap();
            let post = cache.at(HookPoint::ResidPost(l)).unwrap();
            for (b, pos) in batch.positions.iter().enumerate() {
                for p in 0..batch.tokens.max_len() {
                    let mut want = to_vec(&pre.i((b, p)).unwrap());
                    for &(role, k, c) in &iv.edits {
                        let (at, vec) = match role {
                            Role::Entity => (pos.entities[k], &v.entity),
                            Role::Attribute => (pos.attributes[k], &v.attribute),
                        };
                        if at == p {
                            for (w, x) in want.iter_mut().zip(to_vec(&vec.i(l).unwrap())) {
                                *w += c * x;
                            }
                        }
                    }
                    let got = to_vec(&post.i((b, p)).unwrap());
                    let edited = iv.edits.iter().any(|&(role, k, _)| match role {
                        Role::Entity => pos.entities[k] == p,
                        Role::Attribute => pos.attributes[k] == p,
                    });
                    if edited {
                        let d = max_abs(&got, &want);
                        assert!(d < 1e-5, "{} layer {l} prompt {b} pos {p}: {d}", iv.name);
                        assert!(max_abs(&got, &to_vec(&pre.i((b, p)).unwrap())) > 1e-3);
                    } else {
                        assert_eq!(got, want, "{} layer {l} prompt {b} pos {p} moved", iv.name);
                    }
                }
            }
            // the same edit as a tensor
            let delta = iv.delta(&v, &batch, l).unwrap();
            let d = max_abs(&to_vec(&(pre + &delta).unwrap()), &to_vec(post));
            assert!(d < 1e-6, "delta of layer {l}: {d}");
        }
    }
    // the hooks work with run_with_hooks as well, and change the logits
    let mut hooks = Intervention::subtract().hooks(&model, &v, &batch).unwrap();
    let hooked = model.run_with_hooks(&batch.tokens, &mut hooks).unwrap();
    let plain = model.forward(&batch.tokens).unwrap();
    assert!(max_abs(&to_vec(&hooked), &to_vec(&plain)) > 1e-4);
    // zero vectors change nothing
    let zero = BindingVectors {
        entity: v.entity.zeros_like().unwrap(),
        attribute: v.attribute.zeros_like().unwrap(),
    };
    let mut hooks = Intervention::swap_both()
        .hooks(&model, &zero, &batch)
        .unwrap();
    assert_eq!(
        to_vec(&model.run_with_hooks(&batch.tokens, &mut hooks).unwrap()),
        to_vec(&plain)
    );
    // vectors of another shape are refused with a message
    let wrong = BindingVectors {
        entity: v.entity.narrow(0, 0, 1).unwrap(),
        attribute: v.attribute.narrow(0, 0, 1).unwrap(),
    };
    assert!(matches!(
        Intervention::subtract().hooks(&model, &wrong, &batch),
        Err(LensError::Mismatch { .. })
    ));
}

#[test]
fn random_control_keeps_the_norms_and_not_the_directions() {
    let model = tiny();
    let (means, _) =
        BindingMeans::collect(&model, &tiny_batch(&model, Task::Capital, 8, 5)).unwrap();
    let v = means.vectors().unwrap();
    let r = v.random_like(11).unwrap();
    let (ve, va) = v.norms().unwrap();
    let (re, ra) = r.norms().unwrap();
    for (a, b) in ve.iter().zip(&re).chain(va.iter().zip(&ra)) {
        assert!((a - b).abs() <= 1e-4 * a.max(1.0), "{a} vs {b}");
    }
    for l in 0..model.cfg.n_layers {
        let (x, y) = (
            to_vec(&v.entity.i(l).unwrap()),
            to_vec(&r.entity.i(l).unwrap()),
        );
        let cos = x.iter().zip(&y).map(|(a, b)| a * b).sum::<f32>() / (ve[l] * re[l]);
        assert!(cos.abs() < 0.9, "layer {l}: cosine {cos}");
    }
    assert_eq!(
        to_vec(&r.entity),
        to_vec(&v.random_like(11).unwrap().entity)
    );
    assert_ne!(
        to_vec(&r.entity),
        to_vec(&v.random_like(12).unwrap().entity)
    );
}

/// SmolLM2-135M, the notebook's embedded stand-in, on the source's capital prompts: the lists
/// it keeps, the positions, and what it answers — the country written in the context (one of
/// the two, the prompt glues it to "of"), never the capital the source scores.
#[test]
fn smollm2_on_the_sources_capital_prompts() {
    let model = model("smollm2-135m");
    let l = lists().one_token(model).unwrap();
    assert_eq!(
        (l.names.len(), l.countries.len(), l.fruits.len()),
        (11, 5, 23),
        "{l:?}"
    );
    let mut rng = PyRandom::seed(0);
    let prompts = binding::sample_prompts(
        &mut rng,
        16,
        &l.names,
        &l.countries,
        Task::Capital,
        Some(&l.capitals),
        2,
    )
    .unwrap();
    let batch = BindingBatch::new(model, prompts).unwrap();
    for (i, (p, pos)) in batch.prompts.iter().zip(&batch.positions).enumerate() {
        let strs = model
            .ids_to_str_tokens(batch.tokens.row(i).unwrap())
            .unwrap();
        assert_eq!(strs[pos.entities[1]], p.entities[1]); // after "\n": no space
        assert_eq!(strs[pos.attributes[1]], p.attributes[1]); // glued to "of"
        assert_eq!(strs[pos.attributes[1] - 1], " of");
    }
    let clean = binding::evaluate(model, &batch, &mut Hooks::new()).unwrap();
    // the notebook's measurement is this run: same lists, same prompts (seed 0), same numbers
    let (measured_lists, measured) = binding::clean_capital(model, &lists(), 16, 0).unwrap();
    assert_eq!(measured_lists.countries, l.countries);
    assert_eq!(measured.per_prompt, clean.per_prompt);
    let country = clean
        .rescore(&batch.attribute_answers(model).unwrap())
        .unwrap();
    assert!(clean.accuracy <= 0.1, "capital accuracy {}", clean.accuracy);
    assert!(
        country.accuracy + country.swapped >= 0.9,
        "greedy answers not the context's countries: {country}"
    );
}
