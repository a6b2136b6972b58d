//! That a checkpoint, its config and the family mapping agree: no tensor of a block past the
//! config's `n_layers`, and no tensor the mapping did not read, is dropped without a word.

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

/// Whether an unread tensor is one the reference implementation does not read either: causal
/// masks and rotary tables stored as buffers (GPT-2, GPT-J, GPT-Neo, GPT-NeoX, older Llama
/// saves), and a stored unembedding of a model whose config ties it to the embedding (HF ties
/// them and ignores the copy).
fn is_ignored_by_reference(name: &str, tied: bool) -> bool {
    const BUFFERS: [&str; 5] = [
        ".attn.bias",
        ".attn.masked_bias",
        ".attention.bias",
        ".attention.masked_bias",
        ".rotary_emb.inv_freq",
    ];
    BUFFERS.iter().any(|b| name.ends_with(b))
        || (tied && matches!(name, "lm_head.weight" | "output.weight"))
}

/// Errors if the family mapping left checkpoint tensors unread (`unread`, as
/// [`TensorSource::unread`](crate::engine::weights::TensorSource::unread) lists them): the model
/// would run without them and give other numbers than the checkpoint's own implementation.
///
/// # Errors
/// [`LensError::BadWeight`] naming the first unread tensor and how many there are.
pub(crate) fn check_all_used(unread: &[String], arch: &str, tied: bool) -> Result<()> {
    let left: Vec<&String> = unread
        .iter()
        .filter(|n| !is_ignored_by_reference(n, tied))
        .collect();
    let Some(first) = left.first() else {
        return Ok(());
    };
    let shown: Vec<&str> = left.iter().take(8).map(|s| s.as_str()).collect();
    let more = if left.len() > shown.len() {
        format!(" and {} more", left.len() - shown.len())
    } else {
        String::new()
    };
    Err(LensError::BadWeight {
        name: first.to_string(),
        problem: format!(
            "is not used by Candlelens's {arch} model, nor are {} other tensors of the checkpoint ({}{more}); the model would run without them and its numbers would not be the checkpoint's. The checkpoint is not a plain {arch} model (check model_type and architectures in config.json against the weights; a GGUF file may need its Hugging Face safetensors checkpoint instead), or it carries extra parts (a value head, a vision tower): remove them or load the matching checkpoint",
            left.len() - 1,
            shown.join(", ")
        ),
    })
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

    #[test]
    fn unread_tensors_are_named_unless_the_reference_ignores_them_too() {
        let buffers = [
            "transformer.h.0.attn.bias".to_string(),
            "transformer.h.0.attn.masked_bias".into(),
            "gpt_neox.layers.1.attention.bias".into(),
            "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        ];
        assert!(check_all_used(&buffers, "gpt2", false).is_ok());
        assert!(check_all_used(&["lm_head.weight".into()], "llama", true).is_ok());
        let e = check_all_used(&["lm_head.weight".into()], "llama", false).unwrap_err();
        assert!(e.to_string().contains("lm_head.weight"), "{e}");
        let extra = [
            "rope_freqs.weight".to_string(),
            "transformer.h.0.attn.c_attn.bias".into(),
            "v_head.weight".into(),
        ];
        let e = check_all_used(&extra, "llama", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rope_freqs.weight") && e.contains("2 other") && e.contains("v_head.weight"),
            "{e}"
        );
    }
}
