//! A last line of defence around third-party parsers: a panic inside one (candle's GGUF reader
//! divides by a `general.alignment` of 0, for one) becomes a typed error instead of reaching a
//! notebook user, and its message is not printed on the way.
//!
//! Only unwinding panics can be caught; the loaders check what they can (shapes, sizes,
//! offsets) before calling in, so that nothing reaches a parser's aborting paths.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while [`catch_panic`] runs on this thread: the panic hook stays silent.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Wraps the process's panic hook (once) so that panics inside [`catch_panic`] print nothing;
/// every other panic goes to the hook that was installed before.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it is returned as `Err(message)`.
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    install_hook();
    let was = QUIET.with(|q| q.replace(true));
    let out = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    out.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        let zero = std::hint::black_box(0u64);
        let r = catch_panic(|| 10u64.div_ceil(zero));
        assert!(r.unwrap_err().contains("divide by zero"));
        assert_eq!(catch_panic(|| 7).unwrap(), 7);
    }
}
