//! The plumbing of the ops' written-out backward passes: candle custom ops whose forward runs
//! the untracked kernel the plain forward uses (on a copy of the input, so values are the plain
//! forward's) and whose backward is written out beside the op's kernel, in the op's own file
//! (`linear`, `norm`, `softmax`, `activation`, `rope`). On other devices than the CPU the ops
//! compose candle's differentiable ops instead.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

/// `storage` under `layout` as a tensor of its own (a copy) on the CPU.
fn cpu_tensor(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let dev = Device::Cpu;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("custom op: non-contiguous input".into()))?;
    let shape = layout.shape();
    Ok(match storage {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
        CpuStorage::BF16(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
        CpuStorage::F16(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
        _ => {
            return Err(candle_core::Error::Msg(
                "custom op: unsupported dtype".into(),
            ))
        }
    })
}

/// A contiguous CPU tensor's storage, moved out as a [`CpuStorage`].
fn into_storage(t: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let flat = t.flatten_all()?;
    let storage = match t.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1()?),
        DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
        DType::F16 => CpuStorage::F16(flat.to_vec1()?),
        dt => {
            return Err(candle_core::Error::Msg(format!(
                "custom op: unsupported dtype {dt:?}"
            )))
        }
    };
    Ok((storage, t.shape().clone()))
}

/// An op of a run with gradients: its forward (the untracked kernel the plain forward runs)
/// and its written-out backward, differentiable in its input only. [`apply`] makes it a candle
/// custom op.
pub(crate) trait Differentiable: Send + Sync + 'static {
    /// The op's name in candle's graph.
    fn name(&self) -> &'static str;

    /// The untracked forward of `x` (contiguous, on the CPU).
    ///
    /// # Errors
    /// Whatever the kernel returns.
    fn forward(&self, x: &Tensor) -> crate::error::Result<Tensor>;

    /// `∂m/∂x` from the input `x`, the output `y` and `g = ∂m/∂y`.
    ///
    /// # Errors
    /// Tensor errors of candle's ops.
    fn backward(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Tensor>;
}

/// A [`Differentiable`] as candle sees it.
struct Custom<O>(O);

impl<O: Differentiable> CustomOp1 for Custom<O> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_tensor(storage, layout)?;
        let y = self
            .0
            .forward(&x)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        into_storage(&y.contiguous()?)
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.0.backward(arg, res, g)?))
    }
}

/// `op` applied as a custom op to a contiguous `x`, so that autograd calls its written-out
/// backward.
///
/// # Errors
/// Whatever the op's forward returns (shape mismatches).
pub(crate) fn apply<O: Differentiable>(x: &Tensor, op: O) -> crate::error::Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op1_arc(std::sync::Arc::new(Box::new(Custom(op))))?)
}

#[cfg(test)]
pub(crate) mod testing {
    //! The check every op's backward passes: value and gradient against candle's autograd of
    //! the composed ops.
    use candle_core::{Device, Tensor, Var};

    pub(crate) fn max_abs(t: Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// `op`'s value and the gradient of `Σ (op(x) ⊙ c)` (random `c` of the output's shape)
    /// against the composed reference's.
    pub(crate) fn same_as(
        shape: &[usize],
        op: impl Fn(&Tensor) -> crate::error::Result<Tensor>,
        reference: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., shape, &dev).unwrap()).unwrap();
        let y = op(x.as_tensor()).unwrap();
        let c = Tensor::randn(0f32, 1., y.shape(), &dev).unwrap();
        let want = reference(x.as_tensor()).unwrap();
        assert!(max_abs((&y - &want).unwrap()) < 1e-5);
        let g = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&want * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (
            g.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        let d = max_abs((a - b).unwrap());
        assert!(d < 1e-4, "gradients differ by {d}");
    }
}
