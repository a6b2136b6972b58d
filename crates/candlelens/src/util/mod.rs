//! Small pieces shared by the analysis layers (interp, sae, studies) and the notebooks, kept out
//! of any one of them so that no layer imports a study or a notebook helper: progress bars for
//! long sweeps, Python's `random` (seeded splits and samples that match the sources), text
//! corpora cut into token contexts, reading the files a user names, and checking an `.npz` before it is read.

pub mod corpus;
pub mod fs;
pub(crate) mod npz;
pub mod progress;
pub mod pyrandom;
