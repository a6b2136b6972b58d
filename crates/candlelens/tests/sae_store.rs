//! Reading a model over a corpus: contexts packed as SAELens packs them, the activation store
//! (equal to the cache of full runs, BOS left out), feature views and densities read from it,
//! and SAE evaluation equal to the hooked runs it stands for.

mod common;

use candlelens::prelude::*;
use candlelens::sae::splice::Splice;
use candlelens::sae::views::FeatureView;
use candlelens::sae::Sae;
use candlelens::util::corpus::Corpus;
use common::sae_fixture as sae;
use common::*;

const DOCS: [&str; 4] = [
    "The pet of this family is a dog.",
    "Paris is the capital of France. It is a large city on the Seine.",
    "1 2 3 4 5 6 7 8 9 10 11 12",
    "Is the Eiffel Tower in Paris? Yes, it is.",
];

fn contexts(m: &HookedTransformer, size: usize) -> Tokens {
    Corpus::from_texts("test", &DOCS)
        .unwrap()
        .contexts(m, size, 1000)
        .unwrap()
}

#[test]
fn contexts_pack_the_documents_as_saelens_does() {
    let m = tiny("llama");
    let tk = m.tokenizer();
    // the stream, built by hand: documents joined by BOS
    let mut stream = Vec::new();
    for (i, d) in DOCS.iter().enumerate() {
        if i > 0 {
            stream.extend(tk.bos_token_id);
        }
        stream.extend(tk.encode(d).unwrap());
    }
    for size in [5, 8] {
        let begin = if tk.add_bos_by_default {
            tk.bos_token_id
        } else {
            None
        };
        let width = size - usize::from(begin.is_some());
        let want: Vec<Vec<u32>> = stream
            .chunks_exact(width)
            .map(|c| begin.into_iter().chain(c.iter().copied()).collect())
            .collect();
        let t = contexts(&m, size);
        assert_eq!(t.rows(), want.as_slice(), "context size {size}");
        assert!(t.rows().iter().all(|r| r.len() == size));
        let two = Corpus::from_texts("test", &DOCS)
            .unwrap()
            .contexts(&m, size, 2)
            .unwrap();
        assert_eq!(two.rows(), &want[..2]);
    }
    let c = Corpus::from_texts("test", &DOCS).unwrap();
    for bad in [1, m.cfg.n_ctx + 1] {
        assert!(matches!(
            c.contexts(&m, bad, 10),
            Err(LensError::BadParameter { .. })
        ));
    }
    assert!(matches!(
        c.contexts(&m, 4, 0),
        Err(LensError::BadParameter { .. })
    ));
    let short = Corpus::from_texts("short", &["a b"]).unwrap();
    assert!(matches!(
        short.contexts(&m, 64, 10),
        Err(LensError::TooFew { .. })
    ));
    assert!(matches!(
        Corpus::from_texts::<&str>("empty", &[]),
        Err(LensError::BadData { .. })
    ));
    // JSONL: the line that is not an object is named
    let dir = std::env::temp_dir().join(format!("candlelens-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.jsonl");
    std::fs::write(
        &good,
        "{\"title\": \"a\", \"text\": \"one\"}\n\n{\"text\": \"two\"}\n",
    )
    .unwrap();
    let read = Corpus::from_jsonl(&good).unwrap();
    assert_eq!(read.documents.len(), 2);
    assert_eq!(read.documents[1].text, "two");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"one\"}\n[1, 2]\n").unwrap();
    match Corpus::from_jsonl(&bad) {
        Err(LensError::BadData { detail, .. }) => assert!(detail.contains("line 2"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Corpus::from_jsonl(dir.join("absent.jsonl")),
        Err(LensError::MissingFile { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_store_holds_the_cached_activations_without_bos() {
    let m = tiny("llama");
    let t = contexts(&m, 6);
    let bos = m.tokenizer().bos_token_id;
    let (_, cache) = m.run_with_cache(&t, None).unwrap();
    for hook in [
        "blocks.1.hook_resid_pre",
        "blocks.0.hook_mlp_out",
        "blocks.1.attn.hook_z",
    ] {
        let hp = HookPoint::parse(hook).unwrap();
        // batches of 2 contexts, each run stopping after the hook's block
        let store = m.collect_activations(&t, hp, 2).unwrap();
        let full = cache.get(hook).unwrap();
        let (b, p) = (full.dim(0).unwrap(), full.dim(1).unwrap());
        let full = full.reshape((b * p, ())).unwrap();
        let mut want = Vec::new();
        for (c, row) in t.rows().iter().enumerate() {
            let first = usize::from(bos.is_some() && row.first().copied() == bos);
            want.extend((first..row.len()).map(|pos| (c, pos)));
        }
        assert_eq!(store.index, want, "{hook}");
        for (r, &(c, pos)) in store.index.iter().enumerate() {
            let a = to_vec(&store.acts.i(r).unwrap());
            let b = to_vec(&full.i(c * p + pos).unwrap());
            assert!(max_abs(&a, &b) < 1e-5, "{hook} row {r}");
        }
    }
    // stopping early is the residual entering that block
    let x = m.run_until(&t, 1, &mut candlelens::hooks::NoHooks).unwrap();
    let want = cache.get("blocks.1.hook_resid_pre").unwrap();
    assert!(max_abs(&to_vec(&x), &to_vec(want)) < 1e-6);
    assert!(matches!(
        m.run_until(&t, m.cfg.n_layers + 1, &mut candlelens::hooks::NoHooks),
        Err(LensError::LayerOutOfRange { .. })
    ));
    assert!(matches!(
        m.collect_activations(&t, HookPoint::ResidPre(1), 0),
        Err(LensError::BadParameter { .. })
    ));
    assert!(matches!(
        m.collect_activations(&t, HookPoint::ResidPre(99), 2),
        Err(LensError::LayerOutOfRange { .. })
    ));
}

#[test]
fn views_and_densities_read_from_the_store_equal_the_spliced_run() {
    let m = tiny("llama");
    let t = contexts(&m, 6);
    let s = sae("standard");
    let store = m.collect_activations(&t, s.hook, 3).unwrap();
    let (_, cache) = m.run_with_saes(&t, &mut [Splice::new(&s)]).unwrap();
    let acts = cache
        .get(&format!("{}.hook_sae_acts_post", s.hook))
        .unwrap()
        .clone();
    let at =
        |c: usize, p: usize, f: usize| -> f32 { acts.i((c, p, f)).unwrap().to_scalar().unwrap() };
    // densities over the store's positions, counted from the cache
    let density = store.feature_density(&s).unwrap();
    for (f, &got) in density.iter().enumerate() {
        let fired = store
            .index
            .iter()
            .filter(|&&(c, p)| at(c, p, f) > 0.0)
            .count();
        let want = fired as f32 / store.len() as f32;
        assert!((got - want).abs() < 1e-6, "feature {f}");
    }
    // the densest feature's view: its contexts are the cache's strongest store positions
    let f = (0..s.d_sae())
        .max_by(|&a, &b| density[a].total_cmp(&density[b]))
        .unwrap();
    let view = FeatureView::from_store(&m, &s, &store, f, 3, 2).unwrap();
    let mut cells: Vec<f32> = store.index.iter().map(|&(c, p)| at(c, p, f)).collect();
    assert_eq!(view.activations.len(), store.len());
    cells.sort_by(|a, b| b.total_cmp(a));
    assert!(!view.contexts.is_empty());
    for (ctx, want) in view.contexts.iter().zip(&cells) {
        assert!((ctx.act - want).abs() < 1e-5, "{} vs {want}", ctx.act);
        assert!((ctx.act - at(ctx.prompt, ctx.pos, f)).abs() < 1e-5);
        assert!((ctx.tokens[ctx.peak].1 - ctx.act).abs() < 1e-6);
    }
    // the density histogram counts every live feature once and names the dead ones
    let dead = density.iter().filter(|&&d| d == 0.0).count();
    let fig = candlelens::sae::views::density_histogram(&[0.0, 1e-7, 0.002, 0.5, 1.0, 0.0], "t");
    let svg = fig.to_svg().unwrap();
    assert!(svg.contains("6 features, 2 dead"), "{svg}");
    let fig = candlelens::sae::views::density_histogram(&density, "store");
    assert!(fig.to_svg().unwrap().contains(&format!("{dead} dead")));
    // an SAE at another point cannot read this store
    let other = sae("transcoder");
    assert!(matches!(
        store.feature_density(&other),
        Err(LensError::Mismatch { .. })
    ));
    assert!(matches!(
        FeatureView::from_store(&m, &s, &store, s.d_sae(), 3, 2),
        Err(LensError::OutOfRange { .. })
    ));
}

#[test]
fn evaluation_equals_the_hooked_runs_it_stands_for() {
    let m = tiny("llama");
    let t = contexts(&m, 6);
    let bos = m.tokenizer().bos_token_id;
    let n_pred: usize = t.rows().iter().map(|r| r.len() - 1).sum();
    let ce = |logits: &Tensor| HookedTransformer::loss_sum(logits, &t).unwrap().0 / n_pred as f64;
    for name in ["standard", "topk", "transcoder"] {
        let s = sae(name);
        let e = m.evaluate_sae(&s, &t, 2).unwrap();
        let out = s.output_hook().to_string();
        // the model
        assert!((e.ce_loss_without_sae as f64 - m.loss(&t).unwrap() as f64).abs() < 1e-5);
        // the reconstruction put in by a plain hook (for a transcoder: its prediction from the
        // input point replaces the output point)
        let (_, cache) = m
            .run_with_cache(&t, Some(HookFilter::Points(vec![s.hook])))
            .unwrap();
        let x = cache.get(&s.hook.to_string()).unwrap().clone();
        let code = s.encode(&x).unwrap();
        let recons = s.decode(&code.acts_post, &x).unwrap();
        let mut hooks = Hooks::new();
        let r = recons.clone();
        hooks.add(&out, move |_, _| Ok(Some(r.clone()))).unwrap();
        let with = ce(&m.run_with_hooks(&t, &mut hooks).unwrap());
        assert!((e.ce_loss_with_sae as f64 - with).abs() < 1e-5, "{name}");
        let mut hooks = Hooks::new();
        hooks.add(&out, |a, _| Ok(Some(a.zeros_like()?))).unwrap();
        let abl = ce(&m.run_with_hooks(&t, &mut hooks).unwrap());
        assert!(
            (e.ce_loss_with_ablation as f64 - abl).abs() < 1e-5,
            "{name}"
        );
        let clean = m.loss(&t).unwrap() as f64;
        let score = (abl - with) / (abl - clean);
        // the score divides by `abl - clean`, which is small for the tiny model's transcoder
        // (0.002): f32 rounding of the losses (~1e-6) grows by that factor
        let tol = 1e-4 + 2e-6 * (1.0 + score.abs()) / (abl - clean).abs();
        assert!(
            (e.ce_loss_score as f64 - score).abs() < tol,
            "{name}: {} vs {score} (tolerance {tol:.1e})",
            e.ce_loss_score
        );
        // L0 and explained variance over the non-BOS positions
        let (_, cache) = m
            .run_with_cache(&t, Some(HookFilter::Points(vec![s.output_hook()])))
            .unwrap();
        let y = cache.get(&out).unwrap();
        let p = t.max_len();
        let d_out = s.d_out();
        let (yv, rv, av) = (to_vec(y), to_vec(&recons), to_vec(&code.acts_post));
        let (mut l0, mut err, mut n) = (0f64, 0f64, 0usize);
        let mut rows = Vec::new();
        for (c, row) in t.rows().iter().enumerate() {
            let first = usize::from(bos.is_some() && row.first().copied() == bos);
            for pos in first..row.len() {
                let i = c * p + pos;
                n += 1;
                l0 += av[i * s.d_sae()..(i + 1) * s.d_sae()]
                    .iter()
                    .filter(|&&a| a > 0.0)
                    .count() as f64;
                let yr = &yv[i * d_out..(i + 1) * d_out];
                let rr = &rv[i * d_out..(i + 1) * d_out];
                err += yr
                    .iter()
                    .zip(rr)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>();
                rows.push(yr.to_vec());
            }
        }
        let mean: Vec<f64> = (0..d_out)
            .map(|j| rows.iter().map(|r| r[j] as f64).sum::<f64>() / n as f64)
            .collect();
        let total: f64 = rows
            .iter()
            .map(|r| {
                r.iter()
                    .zip(&mean)
                    .map(|(a, m)| (*a as f64 - m).powi(2))
                    .sum::<f64>()
            })
            .sum();
        assert_eq!(e.positions, n);
        assert!((e.l0 as f64 - l0 / n as f64).abs() < 1e-5, "{name}");
        let ev = 1.0 - err / total;
        assert!(
            (e.explained_variance as f64 - ev).abs() < 1e-4,
            "{name}: {} vs {ev}",
            e.explained_variance
        );
    }
    assert!(matches!(
        m.evaluate_sae(&sae("standard"), &t, 0),
        Err(LensError::BadParameter { .. })
    ));
}

#[test]
fn the_attribution_self_check_ablates_each_cell_alone() {
    let m = tiny("llama");
    let t = m
        .to_tokens(["The pet of this family is", "Is Paris"].as_slice(), None)
        .unwrap();
    let pairs = [(5u32, 9u32)];
    let metric = candlelens::metrics::logit_diff_grad_metric(&pairs);
    let s = sae("standard");
    let fa = m.sae_feature_attribution(&t, &s, &metric).unwrap();
    let cells = fa.top_from(4, 1).unwrap();
    assert!(cells.iter().all(|c| c.pos >= 1));
    let check = m
        .verify_feature_attribution(&t, &s, &metric, &fa, &cells)
        .unwrap();
    assert_eq!(check.cells.len(), 4);
    let x = m
        .run_with_cache(&t, Some(HookFilter::Points(vec![s.hook])))
        .unwrap()
        .1
        .get(&s.hook.to_string())
        .unwrap()
        .clone();
    let code = s.encode(&x).unwrap();
    let clean = s.decode(&code.acts_post, &x).unwrap();
    for (c, est, exact) in &check.cells {
        assert_eq!(*est, -c.score);
        // by hand: the model's activation plus what zeroing that one feature there changes
        let mut v: Vec<f32> = code.acts_post.flatten_all().unwrap().to_vec1().unwrap();
        let (_, p, d) = code.acts_post.dims3().unwrap();
        v[(c.batch * p + c.pos) * d + c.feature] = 0.0;
        let edited = Tensor::from_vec(v, code.acts_post.shape(), &Device::Cpu).unwrap();
        let delta = (s.decode(&edited, &x).unwrap() - &clean).unwrap();
        let mut hooks = Hooks::new();
        hooks
            .add(&s.hook.to_string(), move |a, _| Ok(Some((a + &delta)?)))
            .unwrap();
        let logits = m.run_with_hooks(&t, &mut hooks).unwrap();
        let after = candlelens::metrics::mean(
            &candlelens::metrics::logit_diff(&m.gather_last(&logits, &t).unwrap(), &pairs).unwrap(),
        );
        assert!(
            (exact - (after - fa.metric)).abs() < 1e-4,
            "{c:?}: {exact} vs {}",
            after - fa.metric
        );
    }
    assert!(check.correlation.is_finite());
    assert!(check.to_string().contains("correlation"));
    // setting one cell moves the run by exactly that feature's decoder change there
    let c = cells[0];
    let mut set = [Splice::new(&s).set_at(&[(c.batch, c.pos, c.feature)], 2.5)];
    let (_, cache) = m.run_with_saes(&t, &mut set).unwrap();
    let after = cache
        .get(&format!("{}.hook_sae_acts_post", s.hook))
        .unwrap();
    let diff = (after - &code.acts_post).unwrap().abs().unwrap();
    let v: Vec<f32> = diff.flatten_all().unwrap().to_vec1().unwrap();
    let (_, p, d) = code.acts_post.dims3().unwrap();
    let at = (c.batch * p + c.pos) * d + c.feature;
    assert!(v.iter().enumerate().all(|(i, &x)| if i == at {
        (x - (2.5 - c.act).abs()).abs() < 1e-4
    } else {
        x == 0.0
    }));
    // a cell outside the prompts is a typed error, not a panic
    let mut bad = [Splice::new(&s).ablate_at(&[(5, 0, 0)])];
    assert!(matches!(
        m.run_with_saes(&t, &mut bad),
        Err(LensError::OutOfRange { .. })
    ));
}

/// A ReLU SAE on `blocks.{l}.attn.hook_z` of `m` with seeded weights.
fn z_sae(m: &HookedTransformer, l: usize) -> Sae {
    use candlelens::sae::{Architecture, Normalize};
    let d_in = m.cfg.n_heads * m.cfg.d_head;
    let d_sae = 24;
    let mut seed = 7u64;
    let mut rnd = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * scale
            })
            .collect()
    };
    let t = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
    Sae {
        hook: HookPoint::Z(l),
        hook_out: None,
        architecture: Architecture::Relu,
        normalize: Normalize::None,
        apply_b_dec_to_input: true,
        w_enc: t(rnd(d_in * d_sae, 2.0), &[d_in, d_sae]),
        b_enc: t(rnd(d_sae, 0.2), &[d_sae]),
        w_dec: t(rnd(d_sae * d_in, 0.5), &[d_sae, d_in]),
        b_dec: t(rnd(d_in, 0.1), &[d_in]),
        threshold: None,
        w_skip: None,
        center_input: false,
        source: "test hook_z SAE".into(),
        notes: Vec::new(),
    }
}

#[test]
fn saes_on_hook_z_read_and_write_the_heads_flattened() {
    let m = tiny("llama");
    let t = m
        .to_tokens(["The pet of this family is", "Is Paris"].as_slice(), None)
        .unwrap();
    let s = z_sae(&m, 1);
    let (h, dh) = (m.cfg.n_heads, m.cfg.d_head);
    // error term on: the model's run
    let (logits, cache) = m.run_with_saes(&t, &mut [Splice::new(&s)]).unwrap();
    let plain = m.forward(&t).unwrap();
    assert!(max_abs(&to_vec(&logits), &to_vec(&plain)) < 1e-5);
    let input = cache.get("blocks.1.attn.hook_z.hook_sae_input").unwrap();
    assert_eq!(input.dims(), &[2, t.max_len(), h * dh]);
    // error term off: a plain hook putting decode(encode(z flattened head-major)) back per head
    let (_, zc) = m
        .run_with_cache(&t, Some(HookFilter::Points(vec![HookPoint::Z(1)])))
        .unwrap();
    let z = zc.get("blocks.1.attn.hook_z").unwrap().clone();
    let (b, p) = (z.dim(0).unwrap(), z.dim(1).unwrap());
    let flat = z.reshape((b, p, h * dh)).unwrap();
    assert!(max_abs(&to_vec(&flat), &to_vec(input)) < 1e-6);
    let recons = s
        .decode(&s.encode(&flat).unwrap().acts_post, &flat)
        .unwrap()
        .reshape((b, p, h, dh))
        .unwrap();
    let mut hooks = Hooks::new();
    hooks
        .add("blocks.1.attn.hook_z", move |_, _| Ok(Some(recons.clone())))
        .unwrap();
    let want = m.run_with_hooks(&t, &mut hooks).unwrap();
    let (got, _) = m
        .run_with_saes(&t, &mut [Splice::new(&s).error_term(false)])
        .unwrap();
    assert!(max_abs(&to_vec(&got), &to_vec(&want)) < 1e-5);
    // attribution runs through the heads too (its metric is the model's)
    let pairs = [(5u32, 9u32)];
    let fa = m
        .sae_feature_attribution(&t, &s, &candlelens::metrics::logit_diff_grad_metric(&pairs))
        .unwrap();
    let plain_metric = candlelens::metrics::mean(
        &candlelens::metrics::logit_diff(&m.last_logits(&t).unwrap(), &pairs).unwrap(),
    );
    assert!((fa.metric - plain_metric).abs() < 1e-5);
    // the view's logit effects go through W_O, then W_U
    let view = FeatureView::build(&m, &s, &t, 0, 2, 1).unwrap();
    let w_o = m
        .W_O_at(1)
        .unwrap()
        .reshape((h * dh, m.cfg.d_model))
        .unwrap();
    let eff = to_vec(
        &s.w_dec
            .i(0)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .matmul(&w_o)
            .unwrap()
            .matmul(&m.W_U().unwrap())
            .unwrap(),
    );
    let top = eff.iter().copied().fold(f32::MIN, f32::max);
    assert!((view.promoted[0].1 - top).abs() < 1e-4);
    // saved as SAELens writes hook_z SAEs, and read back
    let dir = std::env::temp_dir().join(format!("candlelens-zsae-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    s.save(&dir).unwrap();
    let cfg = std::fs::read_to_string(dir.join("cfg.json")).unwrap();
    assert!(cfg.contains("\"reshape_activations\": \"hook_z\""), "{cfg}");
    let back = Sae::load(&dir).unwrap();
    assert_eq!(back.hook, HookPoint::Z(1));
    std::fs::remove_dir_all(&dir).unwrap();
    // a width that is not the point's is refused
    let mut wrong = z_sae(&m, 1);
    wrong.hook = HookPoint::MlpPost(1);
    assert_ne!(m.cfg.d_mlp, h * dh);
    assert!(matches!(
        m.run_with_saes(&t, &mut [Splice::new(&wrong)]),
        Err(LensError::Mismatch { .. })
    ));
}

#[test]
fn a_store_gathered_with_hooks_holds_the_hooked_activations() {
    let m = tiny("llama");
    let t = contexts(&m, 5);
    let ablate = |h: &mut Hooks| {
        h.add("blocks.0.hook_mlp_out", |a, _| Ok(Some(a.zeros_like()?)))
            .unwrap();
    };
    let mut hooks = Hooks::new();
    ablate(&mut hooks);
    let hp = HookPoint::ResidPre(1);
    let store = m
        .collect_activations_with_hooks(&t, hp, 2, &mut hooks)
        .unwrap();
    let mut hooks = Hooks::new();
    ablate(&mut hooks);
    let (_, cache) = m
        .run_with_hooks_and_cache(
            &t,
            &mut hooks,
            Some(HookFilter::Points(vec![hp])),
            LogitsAt::All,
        )
        .unwrap();
    let full = cache.at(hp).unwrap();
    let p = full.dim(1).unwrap();
    let full = full.reshape((full.dim(0).unwrap() * p, ())).unwrap();
    let plain = m.collect_activations(&t, hp, 2).unwrap();
    assert_eq!(store.index, plain.index);
    for (r, &(c, pos)) in store.index.iter().enumerate() {
        let a = to_vec(&store.acts.i(r).unwrap());
        assert!(max_abs(&a, &to_vec(&full.i(c * p + pos).unwrap())) < 1e-5);
        assert!(
            max_abs(&a, &to_vec(&plain.acts.i(r).unwrap())) > 1e-4,
            "row {r}: the hook did nothing"
        );
    }
    // a hook past the block where the runs stop never fires, and the audit says so
    let mut late = Hooks::new();
    late.add("ln_final.hook_normalized", |_, _| Ok(None))
        .unwrap();
    m.collect_activations_with_hooks(&t, hp, 2, &mut late)
        .unwrap();
    assert!(!late.audit().all_fired());
}
