//! `lens`: Candlelens from the command line (headless runs, inspection, benchmarks).
//!
//! One file per subcommand; each holds its arguments and its run. JSON output comes from
//! `serde` derives on the result types.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Appends one formatted line to an output buffer.
macro_rules! p {
    ($o:expr, $($t:tt)*) => {{
        $o.push_str(&format!($($t)*));
        $o.push('\n');
    }};
}

mod attribute;
mod bench;
mod common;
mod dla;
mod generate;
mod inspect;
mod lre;
mod models;
mod patch;
mod path_patch;
mod probe;
mod run;
mod sae;
mod steering;
mod store;

#[derive(Parser)]
#[command(
    name = "lens",
    version,
    about = "Candlelens: mechanistic interpretability in Rust"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a prompt: top-k next-token logits and the residual stream per layer.
    Run(run::RunArgs),
    /// Direct logit attribution of an answer pair's logit difference at the last position,
    /// per component or per head.
    Dla(dla::DlaArgs),
    /// Continue a prompt (or a file of prompts, as one batch): greedy or sampled, KV cache.
    Generate(generate::GenerateArgs),
    /// Architecture summary and every hook name with its shape.
    Inspect(inspect::InspectArgs),
    /// A steering vector (CAA): the mean residual stream entering a block at each positive
    /// prompt's last token minus the same over the negative prompts, written as .npy for
    /// `lens generate --steer`.
    SteeringVector(steering::SteeringVectorArgs),
    /// Logistic probes per layer for a binary label of each text (JSONL), at its last token, on
    /// Python's seeded split, with a shuffled-label control.
    Probe(probe::ProbeArgs),
    /// A corpus's activations at hook points, written to disk as a resumable, shardable dataset
    /// of safetensors shards with a manifest.
    Store(store::StoreArgs),
    /// Activation patching: corrupted run, clean activations put in, layer x position grid.
    Patch(patch::PatchArgs),
    /// Attribution patching: every cell of a patching grid from one backward pass, optionally
    /// checked against the exact sweep.
    Attribute(attribute::AttributeArgs),
    /// Path patching: the clean output of sender heads along the paths into receivers only
    /// (the logits, or heads' queries, keys or values), every other head frozen.
    PathPatch(path_patch::PathPatchArgs),
    /// A sparse autoencoder or transcoder spliced into one prompt's run: L0, reconstruction
    /// error and the strongest features at a position.
    Sae(sae::SaeArgs),
    /// Linear relational embedding: fit on 60% of a relation, faithfulness on the rest.
    Lre(lre::LreArgs),
    /// List the registered model aliases.
    Models,
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match &cli.cmd {
        Cmd::Run(a) => run::run(a),
        Cmd::Dla(a) => dla::dla(a),
        Cmd::Generate(a) => generate::generate(a),
        Cmd::Inspect(a) => inspect::inspect(a),
        Cmd::SteeringVector(a) => steering::steering_vector(a),
        Cmd::Probe(a) => probe::probe(a),
        Cmd::Store(a) => store::store(a),
        Cmd::Models => models::models(),
        Cmd::Bench(b) => bench::bench(b),
        Cmd::Patch(a) => patch::patch(a),
        Cmd::Attribute(a) => attribute::attribute(a),
        Cmd::PathPatch(a) => path_patch::path_patch(a),
        Cmd::Lre(a) => lre::lre(a),
        Cmd::Sae(a) => sae::sae(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
