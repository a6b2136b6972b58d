//! The thread count of candle's CPU kernels, fixed once per process. candle asks for it on
//! every matmul (`candle_core::utils::get_num_threads`), and unless `RAYON_NUM_THREADS` is set
//! the answer is recomputed each time from the CPU mask, sysfs and `/proc/cpuinfo`: on a short
//! prompt that was a fifth of the forward (SmolLM2, 38 tokens, 2 cores: 69 → 53 ms).
//! [`pin`] computes candle's own answer once and sets `RAYON_NUM_THREADS` to it, so the count
//! is unchanged and every later call reads one environment variable. A value the user set is
//! left alone.

/// Sets `RAYON_NUM_THREADS` to candle's thread count if it is unset (see the module docs).
/// Runs once per process, when the first model is built.
pub(crate) fn pin() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RAYON_NUM_THREADS").is_some() {
            return;
        }
        let n = candle_core::utils::get_num_threads();
        // The process sets it once, at the first model load, before candle's thread pools
        // exist; the value is the one candle would compute anyway.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    });
}
