//! Process-wide settings for tensor work on the CPU, applied once when the first model is
//! built: the C allocator ([`malloc`]) and candle's thread count ([`threads`]).

pub(crate) mod malloc;
pub(crate) mod threads;
