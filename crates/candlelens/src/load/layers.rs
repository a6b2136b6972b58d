//! That a checkpoint and its config agree on the blocks: no tensor of a block past the config's
//! `n_layers` is dropped without a word.

use crate::error::{LensError, Result};

/// The block a checkpoint tensor belongs to, from its name (`model.layers.12.…`,
/// `transformer.h.3.…`, `gpt_neox.layers.0.…`, `blk.5.…` in GGUF), if any.
fn layer_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find_map(|w| match w[0] {
        "layers" | "h" | "blocks" | "blk" | "layer" => w[1].parse().ok(),
        _ => None,
    })
}

/// Errors if the checkpoint holds blocks past the config's `n_layers`: their weights would be
/// dropped without a word.
///
/// # Errors
/// [`LensError::BadWeight`] naming the first such tensor.
pub(crate) fn check_layers<'a>(
    names: impl Iterator<Item = &'a str>,
    n_layers: usize,
) -> Result<()> {
    let mut extra: Vec<(usize, &str)> = names
        .filter_map(|n| layer_of(n).filter(|&l| l >= n_layers).map(|l| (l, n)))
        .collect();
    extra.sort();
    if let Some(&(l, name)) = extra.first() {
        let top = extra.iter().map(|e| e.0).max().unwrap_or(l);
        return Err(LensError::BadWeight {
            name: name.to_string(),
            problem: format!(
                "belongs to block {l}, but the config says the model has {n_layers} layers (the checkpoint has blocks up to {top}); the config and the weights disagree: fix num_hidden_layers (or n_layer) to {} or use the matching checkpoint",
                top + 1
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_past_the_config_are_named() {
        let names = [
            "model.layers.0.mlp.w",
            "model.layers.3.mlp.w",
            "model.norm.weight",
            "lm_head.weight",
        ];
        assert!(check_layers(names.iter().copied(), 4).is_ok());
        let e = check_layers(names.iter().copied(), 3).unwrap_err();
        assert!(
            e.to_string().contains("model.layers.3.mlp.w") && e.to_string().contains("to 4"),
            "{e}"
        );
        assert_eq!(layer_of("transformer.h.11.attn.c_attn.weight"), Some(11));
        assert_eq!(layer_of("blk.5.attn_q.weight"), Some(5));
        assert_eq!(layer_of("transformer.wte.weight"), None);
    }
}
