//! The C allocator's settings for tensor work. A forward allocates and frees tensors of tens
//! of megabytes; glibc serves blocks above its mmap threshold with fresh `mmap`s and trims the
//! heap back to the system, so every such tensor is new memory whose first touch page-faults.
//! [`tune`] raises the mmap threshold to its maximum (32 MiB), serves the blocks above it from
//! the heap too (`M_MMAP_MAX = 0`) and stops heap trimming, so freed tensors are reused:
//! measured on SmolLM2 (50 prompts, 2 cores) a `run_with_cache` that caches 3.5 GB went from
//! 1.43× to 1.01× the plain forward, and the plain forward from 2.2 to 2.1 s; on Gemma 3 270M
//! one prompt's forward, whose full-vocabulary logits (40 MB) were a fresh mapping every run,
//! went from 160–190 ms (median) to 103–106 ms. The cost: the process keeps its peak heap after
//! big runs (reused, not returned).
//!
//! Set `CANDLELENS_MALLOC=system` to leave the allocator as it is. Only glibc on Linux is
//! tuned; elsewhere this does nothing.

/// Environment variable that turns the tuning off (`system`).
pub(crate) const MALLOC_VAR: &str = "CANDLELENS_MALLOC";

/// Tunes glibc's malloc for tensor work, once per process (see the module docs).
pub(crate) fn tune() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var(MALLOC_VAR).is_ok_and(|v| v.eq_ignore_ascii_case("system")) {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
            // -1: never trim (glibc reads it as the largest size)
            libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
            // 0: serve every block from the heap, the ones above 32 MiB too (a full-vocabulary
            // logits tensor); glibc still falls back to mmap when the heap cannot grow
            libc::mallopt(libc::M_MMAP_MAX, 0);
        }
    });
}
