//! SAELens's release table, for the releases Candlelens can load (`data/sae/releases.json`, made
//! from SAELens's `pretrained_saes.yaml` by `scripts/make-sae-releases.py`; SAELens is MIT,
//! `data/sae/LICENSE-SAELens`), and loading an SAE by release and id from the hub.

use std::path::PathBuf;

use serde::Deserialize;

use crate::engine::hooks::HookPoint;
use crate::error::{did_you_mean, LensError, Result};
use crate::load::hub::HubRepo;

use super::Sae;

const TABLE: &str = include_str!("../../../../data/sae/releases.json");

/// One release: a hub repo of SAEs for one model.
#[derive(Clone, Debug, Deserialize)]
pub struct Release {
    /// The hub repo.
    pub repo_id: String,
    /// The model it was trained on (SAELens's name).
    pub model: String,
    /// The on-disk format: `sae_lens`, `gemma_scope` (params.npz), `gemma_scope_2`.
    pub format: String,
    /// Config fields the release overrides (SAELens's `config_overrides`).
    #[serde(default)]
    pub config_overrides: Option<serde_json::Value>,
    /// Its SAEs.
    pub saes: Vec<ReleaseSae>,
}

/// One SAE of a release.
#[derive(Clone, Debug, Deserialize)]
pub struct ReleaseSae {
    /// The id SAELens uses (`blocks.8.hook_resid_pre`, `layer_12/width_16k/canonical`).
    pub id: String,
    /// Its folder in the repo.
    pub path: String,
    /// Its average L0, when the table gives it.
    #[serde(default)]
    pub l0: Option<f64>,
    /// Its Neuronpedia id.
    #[serde(default)]
    pub neuronpedia: Option<String>,
    /// The activation scale its weights expect (`x · s`), folded in at load.
    #[serde(default)]
    pub norm_scaling_factor: Option<f64>,
}

#[derive(Deserialize)]
struct Table {
    saelens_version: String,
    releases: std::collections::BTreeMap<String, Release>,
}

fn table() -> Result<Table> {
    serde_json::from_str(TABLE).map_err(|e| LensError::Json {
        what: "data/sae/releases.json".into(),
        detail: e.to_string(),
    })
}

/// The SAELens version the table was taken from.
///
/// # Errors
/// A damaged table (a bug).
pub fn saelens_version() -> Result<String> {
    Ok(table()?.saelens_version)
}

/// Every release name, sorted.
///
/// # Errors
/// A damaged table (a bug).
pub fn release_names() -> Result<Vec<String>> {
    Ok(table()?.releases.into_keys().collect())
}

/// A release and one of its SAEs.
///
/// # Errors
/// [`LensError::UnknownChoice`] for an unknown release or id, with the closest names.
pub fn resolve(release: &str, id: &str) -> Result<(Release, ReleaseSae)> {
    let t = table()?;
    let Some(r) = t.releases.get(release) else {
        let hint = did_you_mean(release, t.releases.keys().map(String::as_str));
        return Err(LensError::UnknownChoice {
            what: "SAE release".into(),
            given: release.to_string(),
            choices: format!(
                "a release of SAELens's table (SAELens {}){hint}; candlelens::sae::releases::release_names() lists them",
                t.saelens_version
            ),
        });
    };
    let Some(s) = r.saes.iter().find(|s| s.id == id) else {
        let hint = did_you_mean(id, r.saes.iter().map(|s| s.id.as_str()));
        let some: Vec<&str> = r.saes.iter().take(4).map(|s| s.id.as_str()).collect();
        return Err(LensError::UnknownChoice {
            what: format!("SAE id of {release}"),
            given: id.to_string(),
            choices: format!(
                "one of its {} ids, e.g. {}{hint}",
                r.saes.len(),
                some.join(", ")
            ),
        });
    };
    Ok((r.clone(), s.clone()))
}

/// Gemma Scope 1's hook point for a folder `layer_{l}/width_…` of a `res`, `mlp` or `att` repo.
fn gemma_scope_hook(repo_id: &str, path: &str) -> Result<HookPoint> {
    let layer = path
        .strip_prefix("layer_")
        .and_then(|r| r.split('/').next())
        .and_then(|l| l.parse::<usize>().ok());
    let unsupported = |what: &str| LensError::Unsupported {
        what: format!("the Gemma Scope SAE {repo_id}/{path}"),
        fix: what.to_string(),
    };
    let Some(l) = layer else {
        return Err(unsupported(
            "only the per-layer SAEs (layer_L/…) are mapped to hook points",
        ));
    };
    Ok(if repo_id.ends_with("-res") {
        HookPoint::ResidPost(l)
    } else if repo_id.ends_with("-mlp") {
        HookPoint::MlpOut(l)
    } else if repo_id.ends_with("-att") {
        // Gemma Scope's attention SAEs read the heads' outputs before W_O, concatenated
        HookPoint::Z(l)
    } else {
        return Err(unsupported(
            "only Gemma Scope's res, mlp and att repositories are mapped to hook points",
        ));
    })
}

impl Sae {
    /// Loads SAE `id` of SAELens release `release` (`gpt2-small-res-jb`,
    /// `blocks.8.hook_resid_pre`; `gemma-scope-2-270m-pt-res`, `layer_12_width_16k_l0_medium`),
    /// downloading its files from the hub into the HF cache on first use.
    ///
    /// # Errors
    /// [`LensError::UnknownChoice`] for an unknown release or id; hub errors (see
    /// [`HubRepo::get`]); as [`Sae::load`].
    pub fn from_pretrained(release: &str, id: &str) -> Result<Sae> {
        let (r, s) = resolve(release, id)?;
        let repo = HubRepo::new(&r.repo_id)?;
        let fetch = |file: &str| -> Result<PathBuf> { repo.get(&format!("{}/{file}", s.path)) };
        let mut sae = match r.format.as_str() {
            "sae_lens" => {
                let cfg = fetch("cfg.json")?;
                fetch("sae_weights.safetensors")?;
                let dir = cfg.parent().map(PathBuf::from).unwrap_or_default();
                Sae::load_with(&dir, r.config_overrides.as_ref())?
            }
            "gemma_scope" => {
                let f = fetch("params.npz")?;
                let dir = f.parent().map(PathBuf::from).unwrap_or_default();
                Sae::load_gemma_scope(&dir, &gemma_scope_hook(&r.repo_id, &s.path)?.to_string())?
            }
            "gemma_scope_2" => {
                fetch("config.json")?;
                let f = fetch("params.safetensors")?;
                Sae::load(f.parent().map(PathBuf::from).unwrap_or_default())?
            }
            other => {
                return Err(LensError::UnsupportedConfig {
                    field: "release format".into(),
                    value: other.to_string(),
                    fix: "this release's format is not one Candlelens reads".into(),
                })
            }
        };
        if let Some(f) = s.norm_scaling_factor {
            // SAELens folds the factor into the weights: W_enc · s, W_dec / s, b_dec / s
            sae.w_enc = (&sae.w_enc * f)?;
            sae.w_dec = (&sae.w_dec / f)?;
            sae.b_dec = (&sae.b_dec / f)?;
            sae.notes
                .retain(|n| !n.starts_with("normalize_activations: expected_average_only_in"));
        }
        sae.source = format!("{release}/{id}");
        Ok(sae)
    }
}
