//! The three ops where candle's fast fused kernels have no backward (they silently cut the
//! gradient, ASSETS.md). Each takes `grad`: the training path composes differentiable ops, the
//! generation path (no gradients needed) uses the fused kernels.

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

/// Softmax over the last dim. The training path uses [`Softmax`], whose backward needs only
/// its output: the composed version keeps four (heads x T x T) intermediates per layer alive
/// until backward, which for 135M parameters and 700-token prompts was gigabytes.
pub fn softmax(x: &Tensor, grad: bool) -> Result<Tensor> {
    if !grad {
        return candle_nn::ops::softmax_last_dim(&x.contiguous()?);
    }
    match x.dtype() {
        DType::F32 | DType::F64 => x.contiguous()?.apply_op1(Softmax),
        dtype => x
            .to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1(Softmax)?
            .to_dtype(dtype),
    }
}

/// Softmax over the last dim with a backward: dx = y * (dy - sum(dy * y)).
struct Softmax;

fn softmax_rows<T: num_traits::Float + Send + Sync>(src: &[T], dim: usize) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = vec![T::zero(); src.len()];
    out.par_chunks_mut(dim)
        .zip(src.par_chunks(dim))
        .for_each(|(o, x)| {
            let max = x.iter().copied().fold(T::neg_infinity(), T::max);
            let mut sum = T::zero();
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v - max).exp();
                sum = sum + *o;
            }
            for o in o.iter_mut() {
                *o = *o / sum;
            }
        });
    out
}

impl candle_core::CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "azr-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let dim = *layout.dims().last().unwrap_or(&1);
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("azr-softmax needs a contiguous input");
        };
        let out = match storage {
            CpuStorage::F32(data) => CpuStorage::F32(softmax_rows(&data[start..end], dim)),
            CpuStorage::F64(data) => CpuStorage::F64(softmax_rows(&data[start..end], dim)),
            _ => candle_core::bail!("azr-softmax supports f32 and f64 (others are widened first)"),
        };
        Ok((out, layout.shape().clone()))
    }

    /// candle's own softmax kernel (the one `softmax_last_dim` launches); only the backward is
    /// ours. f32 and f64 only, as on the CPU.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{kernel_name, kernels, CudaStorage, CudaStorageSlice};
        use candle_core::cuda_backend::{CudaDevice, WrapErr};

        fn launch<
            T: candle_core::cuda_backend::cudarc::driver::DeviceRepr + candle_core::WithDType,
        >(
            src: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
            dev: &CudaDevice,
            layout: &candle_core::Layout,
        ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("azr-softmax needs a contiguous input");
            };
            let src = src.slice(start..end);
            let n = layout.shape().elem_count();
            let dim = *layout.dims().last().unwrap_or(&1);
            let cfg = LaunchConfig {
                grid_dim: ((n / dim) as u32, 1, 1),
                block_dim: (1, 32, 1),
                shared_mem_bytes: 0,
            };
            let func = dev.get_or_load_func(&kernel_name::<T>("softmax"), &kernels::REDUCE)?;
            // SAFETY: every element is written by the kernel before it is read.
            let dst = unsafe { dev.alloc::<T>(n)? };
            let mut builder = func.builder();
            builder.arg(&src);
            builder.arg(&dst);
            candle_core::builder_arg!(builder, dim as i32);
            // SAFETY: the argument list matches the kernel's signature in candle-kernels.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(dst)
        }

        let dev = storage.device();
        let slice = match &storage.slice {
            CudaStorageSlice::F32(s) => CudaStorageSlice::F32(launch(s, dev, layout)?),
            CudaStorageSlice::F64(s) => CudaStorageSlice::F64(launch(s, dev, layout)?),
            _ => candle_core::bail!("azr-softmax supports f32 and f64 (others are widened first)"),
        };
        let out = CudaStorage {
            slice,
            device: dev.clone(),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some(grad_res.broadcast_sub(&dot)?.mul(res)?))
    }
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
        assert!(close(&softmax(&x, true).unwrap(), &softmax(&x, false).unwrap()) < 1e-6);
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
