//! Process-wide settings for tensor work on the CPU, applied once when the first model is
//! built: the C allocator ([`malloc`]) and candle's thread count ([`threads`]); and the
//! memory a run will need, checked before it allocates ([`memory`]).

pub(crate) mod malloc;
pub mod memory;
pub(crate) mod threads;
