//! `lens models`: the registered aliases.

use candlelens::load::registry::{Source, REGISTRY};

use crate::common::emit;

/// Prints one line per alias: name, where it comes from, what it is.
pub fn models() -> candlelens::Result<()> {
    let mut o = String::new();
    for e in REGISTRY {
        let src = match e.source {
            Source::Embedded { .. } => "embedded".to_string(),
            Source::Hub { repo } => format!("hub: {repo}"),
        };
        p!(o, "{:<18} {:<40} {}", e.alias, src, e.about);
    }
    emit(&o);
    Ok(())
}
