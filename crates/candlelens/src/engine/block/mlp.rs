//! The MLP of a block on its normalised input, before the post-norm: dense (`act(x W_in) W_out`)
//! or gated (`(act(x W_gate) ⊙ x W_in) W_out`), or the sparse mixture of experts of
//! [`super::moe`]. Fires `hook_pre`, `hook_pre_linear` and `hook_post`; the wiring fires
//! `hook_mlp_out` after the post-norm.

use candle_core::Tensor;

use super::Block;
use crate::engine::hooks::{HookPoint, HookSink};
use crate::engine::ops::{activation, gated_activation, hook, linear};
use crate::error::Result;

impl Block<'_> {
    /// The MLP on its normalised input `x [batch, pos, d_model]`, before the post-norm:
    /// `[batch, pos, d_model]`.
    ///
    /// # Errors
    /// Whatever a hook returns.
    pub fn mlp(&self, x: &Tensor, sink: &mut dyn HookSink) -> Result<Tensor> {
        match &self.cfg.moe {
            Some(moe) => self.moe_mlp(x, moe, sink),
            None => self.dense_mlp(x, sink),
        }
    }

    /// A dense MLP, `act(x W_gate) ⊙ (x W_in) W_out` or `act(x W_in) W_out`.
    fn dense_mlp(&self, x: &Tensor, sink: &mut dyn HookSink) -> Result<Tensor> {
        let (l, w) = (self.layer, self.w);
        let post = match &w.w_gate {
            Some(gate) => {
                let pre = hook(sink, HookPoint::MlpPre(l), linear(x, gate, None)?)?;
                let lin = hook(
                    sink,
                    HookPoint::MlpPreLinear(l),
                    linear(x, &w.w_in, w.b_in.as_ref())?,
                )?;
                gated_activation(self.cfg.act, &pre, &lin)?
            }
            None => {
                let pre = hook(
                    sink,
                    HookPoint::MlpPre(l),
                    linear(x, &w.w_in, w.b_in.as_ref())?,
                )?;
                activation(self.cfg.act, &pre)?
            }
        };
        let post = hook(sink, HookPoint::MlpPost(l), post)?;
        linear(&post, &w.w_out, w.b_out.as_ref())
    }
}
