//! Trains a TopK SAE on an embedded model's residual stream over the embedded corpus
//! (`scripts/fetch-models python-docs`), evaluates it as SAELens does, and saves it in
//! SAELens's format — what the `sae-features` notebook does, headless.
//!
//! `cargo run --release --example train_sae -- [MODEL] [LAYER] [CONTEXTS] [OUT_DIR]`
//! (defaults: gemma-3-270m, 6, 320, no save)
use candlelens::prelude::*;
use candlelens::sae::train::{train_topk, TrainConfig};
use candlelens::util::corpus::Corpus;
use std::time::Instant;

fn main() -> candlelens::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("gemma-3-270m", String::as_str);
    let layer: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(6);
    let n_contexts: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(320);
    let t0 = Instant::now();
    let model = HookedTransformer::from_pretrained(name)?;
    println!("loaded {name} in {:.1} s", t0.elapsed().as_secs_f64());
    let corpus = Corpus::python_docs()?;
    // the first contexts train, the last 16 evaluate
    let all = corpus.contexts(&model, 64, n_contexts + 16)?;
    let rows = all.rows();
    let split = rows.len().saturating_sub(16);
    let train = Tokens::new(rows[..split].to_vec(), all.pad_id())?;
    let held_out = Tokens::new(rows[split..].to_vec(), all.pad_id())?;
    let store = model.collect_activations(&train, HookPoint::ResidPost(layer), 32)?;
    println!(
        "{} activations at {} in {:.1} s",
        store.len(),
        store.hook,
        store.seconds
    );
    let cfg = TrainConfig {
        d_sae: 4096,
        k: 32,
        lr: 1e-3,
        steps: 600,
        batch_size: 512,
        seed: 42,
    };
    let (sae, report) = train_topk(&store.acts, store.hook, &cfg)?;
    println!(
        "trained in {:.1} s: FVU {:.3}, {} dead of {}, loss {:.4} -> {:.4}",
        report.seconds,
        report.fvu,
        report.dead,
        cfg.d_sae,
        report.losses[0],
        report.losses[report.losses.len() - 1]
    );
    let t = Instant::now();
    let e = model.evaluate_sae(&sae, &held_out, 8)?;
    println!(
        "held out ({:.1} s): L0 {:.1}, explained variance {:.3}, CE {:.3} clean / {:.3} with SAE / {:.3} ablated, score {:.3}",
        t.elapsed().as_secs_f64(),
        e.l0,
        e.explained_variance,
        e.ce_loss_without_sae,
        e.ce_loss_with_sae,
        e.ce_loss_with_ablation,
        e.ce_loss_score
    );
    if let Some(dir) = args.get(3) {
        sae.save(dir)?;
        println!("saved to {dir}");
    }
    Ok(())
}
