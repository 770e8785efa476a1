//! RMSNorm's forward without a graph, for f32 rows on the CPU. candle's kernel sums each row's
//! squares in one serial chain (~1.4 µs a 896-wide row) and hands every row to rayon: two
//! norms a layer were ~60 µs of a batch-32 decode step's ~2.3 ms a layer. Here a row's sum
//! runs in lanes ([`super::reduce::sum_of`]), and rows go to rayon only in numbers worth it.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::reduce;

/// Elements below which the rows are normed on the calling thread.
const PARALLEL_FROM: usize = 1 << 16;

/// `x * r * weight` with r = 1 / sqrt(mean(x²) + eps) over the last dim (the order the
/// differentiable forward computes it in), for contiguous f32 CPU tensors; None otherwise.
pub fn rms(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let width = weight.elem_count();
    if x.dim(candle_core::D::Minus1)? != width || width == 0 {
        candle_core::bail!(
            "rms_norm: x {:?} against weight {:?}",
            x.dims(),
            weight.dims()
        );
    }
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = weight.storage_and_layout();
    let (Some(xv), Some(w)) = (super::f32s(&xs, xl), super::f32s(&ws, wl)) else {
        return Ok(None);
    };
    let mut out = vec![0f32; xv.len()];
    let eps = eps as f32;
    let norm = |(out, row): (&mut [f32], &[f32])| {
        let r = (reduce::sum_of(row, |v| v * v) / width as f32 + eps)
            .sqrt()
            .recip();
        for ((o, &v), &w) in out.iter_mut().zip(row).zip(w) {
            *o = v * r * w;
        }
    };
    match xv.len() < PARALLEL_FROM {
        true => out.chunks_mut(width).zip(xv.chunks(width)).for_each(norm),
        false => out
            .par_chunks_mut(width)
            .zip(xv.par_chunks(width))
            .for_each(norm),
    }
    Tensor::from_vec(out, x.shape(), x.device()).map(Some)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, D};

    #[test]
    fn matches_the_composed_norm_and_leaves_other_tensors() {
        let dev = Device::Cpu;
        for rows in [1, 3, 100] {
            let x = (Tensor::randn(0f32, 1., (rows, 896), &dev).unwrap() * 3.0).unwrap();
            let w = Tensor::randn(1f32, 0.1, 896, &dev).unwrap();
            let r = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-6)
                .unwrap()
                .sqrt()
                .unwrap()
                .recip()
                .unwrap();
            let want = x.broadcast_mul(&r).unwrap().broadcast_mul(&w).unwrap();
            let got = super::rms(&x, &w, 1e-6).unwrap().unwrap();
            assert!(
                crate::kernels::max_abs_diff(&got, &want) < 1e-5,
                "{rows} rows"
            );
        }
        let x64 = Tensor::zeros((2, 8), DType::F64, &dev).unwrap();
        let w64 = Tensor::ones(8, DType::F64, &dev).unwrap();
        assert!(super::rms(&x64, &w64, 1e-6).unwrap().is_none());
        let w = Tensor::ones(7, DType::F32, &dev).unwrap();
        let x = Tensor::zeros((2, 8), DType::F32, &dev).unwrap();
        assert!(super::rms(&x, &w, 1e-6).is_err(), "widths differ");
    }
}
