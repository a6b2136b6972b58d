//! The pet-analogy patching heatmap on an embedded model, saved as PNG and SVG.
//!
//! `cargo run --release --example pet_patching -- gemma-3-270m /tmp/pet`

use candlelens::metrics;
use candlelens::prelude::*;

const PET: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is";
const SWAPPED: &str = "Mary is a human. Fido is a dog. The pet of this family is Fido. Pebbles is a cat. Rachel is a human. The pet of this family is";

fn main() -> candlelens::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "gemma-3-270m".into());
    let out = args.next().unwrap_or_else(|| "pet_patching".into());
    let model = std::sync::Arc::new(HookedTransformer::from_pretrained(&name)?);
    let clean = model.to_tokens(PET, None)?;
    let corrupt = model.to_tokens(SWAPPED, None)?;
    let metric = metrics::logit_diff_metric(&model.answer_pairs(&[(" Peb", " Rachel")])?);
    let grid = Patcher::new(&model, &clean, &corrupt, metric)?.sweep(PatchTarget::ResidPre)?;
    println!(
        "clean logit diff {:.4}, corrupted {:.4}",
        grid.clean, grid.corrupted
    );
    let labels: Vec<String> = model
        .ids_to_str_tokens(clean.row(0)?)?
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{t}_{i}"))
        .collect();
    let fig = Figure::heatmap(
        grid.values,
        labels,
        grid.row_labels,
        "Logit Difference From Patched Residual Stream",
    )
    .axes("Position", "Layer");
    fig.save(format!("{out}.png"))?;
    fig.save(format!("{out}.svg"))?;
    println!("saved {out}.png and {out}.svg");
    Ok(())
}
