//! `lens models`: the registered aliases, then the architecture families with an example each.

use candlelens::arch::Family;
use candlelens::load::registry::{Source, REGISTRY};

use crate::common::emit;

/// Prints one line per alias (name, where it comes from, what it is), then one per family
/// (its HF `model_type` and an alias to try).
pub fn models() -> candlelens::Result<()> {
    let mut o = String::new();
    for e in REGISTRY {
        let src = match e.source {
            Source::Embedded { .. } => "embedded".to_string(),
            Source::Hub { repo } => format!("hub: {repo}"),
        };
        p!(o, "{:<18} {:<40} {}", e.alias, src, e.about);
    }
    p!(o, "");
    p!(o, "families (HF model_type, an example alias); any checkpoint folder or hub repo of these loads:");
    for f in Family::ALL {
        p!(o, "  {:<12} {}", f.model_type(), f.example_alias());
    }
    emit(&o);
    Ok(())
}
