//! The ops where candle's fast fused kernels have no backward (they silently cut the gradient,
//! ASSETS.md). Each takes `grad`: without it they are candle's kernels; with it, custom ops
//! whose forward value is computed without a graph and whose backward is ours, so the graph
//! keeps only their inputs. Attention, the third such op, has its own module.

#[cfg(feature = "cuda")]
use candle_core::CudaStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Storage, Tensor, D};

/// The dtype reductions run in: at least f32 (bf16/f16 are widened), f64 kept.
pub fn accumulate_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// RMSNorm: x / sqrt(mean(x^2) + eps) * weight, over the last dim, in at least f32. With
/// `grad`, the graph keeps x and the weight only; [`RmsNorm::bwd`] recomputes the rest.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, grad: bool) -> Result<Tensor> {
    if !grad {
        let x = x.contiguous()?;
        if let Some(normed) = crate::kernels::norm::rms(&x, weight, eps)? {
            return Ok(normed);
        }
        return candle_nn::ops::rms_norm(&x, weight, eps as f32);
    }
    // Composed (not candle's kernel, which sums in f32 even for f64) but without a graph.
    let (xd, wd) = (x.detach(), weight.detach());
    let out = xd
        .to_dtype(accumulate_dtype(x.dtype()))?
        .broadcast_mul(&inverse_rms(&xd, eps)?)?
        .to_dtype(x.dtype())?
        .broadcast_mul(&wd)?;
    x.apply_op2(
        weight,
        RmsNorm {
            eps,
            out: Precomputed::new(out),
        },
    )
}

/// 1 / sqrt(mean(x^2) + eps) over the last dim, kept: (.., 1), in at least f32.
fn inverse_rms(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(accumulate_dtype(x.dtype()))?;
    (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()
}

struct RmsNorm {
    eps: f64,
    out: Precomputed,
}

impl candle_core::CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "azr-rms-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.out.cuda()
    }

    /// With r = 1/rms(x) and u = g ⊙ w: dx = r u - x r³ mean(u ⊙ x), dw = Σ g ⊙ x r.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let acc = accumulate_dtype(x.dtype());
        let r = inverse_rms(&x.detach(), self.eps)?;
        let (x32, w32, g32) = (
            x.detach().to_dtype(acc)?,
            w.detach().to_dtype(acc)?,
            g.to_dtype(acc)?,
        );
        let u = g32.broadcast_mul(&w32)?;
        let dot = (&u * &x32)?.mean_keepdim(D::Minus1)?;
        let dx = (u.broadcast_mul(&r)? - x32.broadcast_mul(&(dot * r.powf(3.0)?)?)?)?;
        let h = w.dim(0)?;
        let dw = (g32 * x32.broadcast_mul(&r)?)?.reshape(((), h))?.sum(0)?;
        Ok((Some(dx.to_dtype(x.dtype())?), Some(dw.to_dtype(w.dtype())?)))
    }
}

/// Rotary embedding, "rotate half" form (HF layout): x (b, h, t, d); cos, sin (t, d/2).
/// candle's kernel both ways: the rotation's backward is the rotation by -angle.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, grad: bool) -> Result<Tensor> {
    let out = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    if !grad {
        return Ok(out);
    }
    x.apply_op1(Rope {
        cos: cos.detach(),
        sin: sin.detach(),
        out: Precomputed::new(out),
    })
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
    out: Precomputed,
}

impl candle_core::CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "azr-rope"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.out.cuda()
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let back = candle_nn::rotary_emb::rope(&g.contiguous()?, &self.cos, &self.sin.neg()?)?;
        Ok(Some(back))
    }
}

/// The output of an op computed beforehand without a graph (the custom ops here exist for
/// their backward). The op's forward hands over a copy and drops it, so the graph does not
/// hold it twice.
pub(super) struct Precomputed(std::sync::Mutex<Option<Tensor>>);

impl Precomputed {
    pub fn new(out: Tensor) -> Self {
        Self(std::sync::Mutex::new(Some(out)))
    }

    fn take(&self) -> Result<Tensor> {
        let taken = self.0.lock().map(|mut slot| slot.take());
        match taken {
            Ok(Some(out)) => Ok(out),
            _ => candle_core::bail!("a precomputed op's forward ran twice"),
        }
    }

    pub fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        let out = self.take()?;
        let (storage, layout) = out.storage_and_layout();
        match (
            &*storage,
            layout.is_contiguous() && layout.start_offset() == 0,
        ) {
            (Storage::Cpu(s), true) => Ok((s.clone(), layout.shape().clone())),
            _ => candle_core::bail!("precomputed output is not a whole contiguous CPU tensor"),
        }
    }

    #[cfg(feature = "cuda")]
    pub fn cuda(&self) -> Result<(CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let out = self.take()?;
        let (storage, layout) = out.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => candle_core::bail!("precomputed output is not a CUDA tensor"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn training_and_generation_paths_agree() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., 8, &dev).unwrap();
        assert!(
            max_abs_diff(
                &rms_norm(&x, &w, 1e-6, true).unwrap(),
                &rms_norm(&x, &w, 1e-6, false).unwrap()
            ) < 1e-5
        );
        let cos = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
        assert!(
            max_abs_diff(
                &rope(&x, &cos, &sin, true).unwrap(),
                &rope(&x, &cos, &sin, false).unwrap()
            ) < 1e-5
        );
    }
}
