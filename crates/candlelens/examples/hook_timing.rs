//! Where does a forward pass spend its time? A custom [`HookSink`] that wants every hook point
//! and records the wall time between consecutive points: a profile by TransformerLens name.
//!
//! `cargo run --release --example hook_timing -- gemma-3-270m`
use candlelens::hooks::HookSink;
use candlelens::prelude::*;
use std::collections::BTreeMap;
use std::time::Instant;
/// Accumulates, per hook suffix, the time spent since the previous hook point.
struct Timer {
    last: Instant,
    acc: BTreeMap<String, f64>,
}
impl HookSink for Timer {
    fn wants(&self, p: &HookPoint) -> bool {
        !matches!(p, HookPoint::Result(_))
    }
    fn visit(&mut self, p: &HookPoint, act: Tensor) -> candlelens::Result<Tensor> {
        let now = Instant::now();
        *self.acc.entry(p.suffix().to_string()).or_default() +=
            (now - self.last).as_secs_f64() * 1e3;
        self.last = now;
        Ok(act)
    }
}
fn main() -> candlelens::Result<()> {
    let name = std::env::args().nth(1).unwrap_or("smollm2-135m".into());
    let m = HookedTransformer::from_pretrained(&name)?;
    let t = m.to_tokens("Mary is a human. Fido is a dog. The pet of this family is Fido. Rachel is a human. Pebbles is a cat. The pet of this family is", Some(true))?;
    let mut timer = Timer {
        last: Instant::now(),
        acc: BTreeMap::new(),
    };
    for _ in 0..5 {
        timer.last = Instant::now();
        m.forward_with(&t, LogitsAt::All, &mut timer)?;
    }
    let mut v: Vec<_> = timer.acc.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (k, ms) in v {
        println!("{k:<28} {:.1} ms/forward", ms / 5.0);
    }
    Ok(())
}
