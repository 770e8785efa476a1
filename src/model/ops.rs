//! The ops where candle's fast fused kernels have no backward (they silently cut the gradient,
//! ASSETS.md). Each takes `grad`: the training path composes differentiable ops, the
//! generation path (no gradients needed) uses the fused kernels. Attention, the third such op,
//! has its own module.

use candle_core::{DType, Result, Tensor, D};

/// The dtype reductions run in: at least f32 (bf16/f16 are widened), f64 kept.
pub fn accumulate_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// RMSNorm: x / sqrt(mean(x^2) + eps) * weight, over the last dim, in at least f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, grad: bool) -> Result<Tensor> {
    if !grad {
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32);
    }
    let dtype = x.dtype();
    let x32 = x.to_dtype(accumulate_dtype(dtype))?;
    let scale = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    x32.broadcast_mul(&scale)?
        .to_dtype(dtype)?
        .broadcast_mul(weight)
}

/// Rotary embedding, "rotate half" form (HF layout): x (b, h, t, d); cos, sin (t, d/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, grad: bool) -> Result<Tensor> {
    if !grad {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let (cos, sin) = (
        cos.unsqueeze(0)?.unsqueeze(0)?,
        sin.unsqueeze(0)?.unsqueeze(0)?,
    );
    let rotated_1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let rotated_2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[rotated_1, rotated_2], D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn composed_ops_match_fused_kernels() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., 8, &dev).unwrap();
        assert!(
            close(
                &rms_norm(&x, &w, 1e-6, true).unwrap(),
                &rms_norm(&x, &w, 1e-6, false).unwrap()
            ) < 1e-5
        );
        let cos = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1., (5, 4), &dev).unwrap();
        assert!(
            close(
                &rope(&x, &cos, &sin, true).unwrap(),
                &rope(&x, &cos, &sin, false).unwrap()
            ) < 1e-5
        );
    }
}
