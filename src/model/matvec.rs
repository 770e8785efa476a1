//! `x · wᵀ` for the few rows of a decode step (`x` (m, k) f32 with m <= [`MAX_ROWS`], `w`
//! (n, k) f32 or bf16 in the HF layout), on AVX-512 CPUs.
//!
//! A decode step reads every weight once for a handful of rows, so it is bound by memory, not
//! arithmetic; candle's gemm repacks the transposed weight on every call and reaches a third of
//! the bandwidth at 8 rows. This kernel streams each weight row once, against all rows of `x`
//! (which stay in L1/L2), with no packing. Every output element is one sequential k-order sum
//! and one fixed horizontal reduction, whatever m is, so a row's result does not depend on its
//! batch: greedy decoding at batch 1 and batch 8 agree bit for bit.
//!
//! No backward: only passes without grad use it ([`usable`] says when).

use candle_core::{CpuStorage, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Most rows of `x` the kernel takes; larger products (prefill, training) go to gemm.
pub const MAX_ROWS: usize = 16;

/// Whether [`matmul_nt`] can compute `x · wᵀ` for these operands on this machine.
pub fn usable(x: &Tensor, w: &Tensor) -> bool {
    let rows = x.dims().iter().rev().skip(1).product::<usize>();
    matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && matches!(w.dtype(), DType::F32 | DType::BF16)
        && (1..=MAX_ROWS).contains(&rows)
        && w.rank() == 2
        && cpu_supported()
}

fn cpu_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x (m, k) · w (n, k)ᵀ -> (m, n)` in f32, with no gradient. Callers check [`usable`].
pub fn matmul_nt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &MatVec)
}

struct MatVec;

impl candle_core::CustomOp2 for MatVec {
    fn name(&self) -> &'static str {
        "azr-matvec"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, wk) = wl.shape().dims2()?;
        if wk != k || !(1..=MAX_ROWS).contains(&m) || !cpu_supported() {
            candle_core::bail!(
                "azr-matvec: cannot take x {:?} and w {:?}",
                xl.dims(),
                wl.dims()
            );
        }
        let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            candle_core::bail!("azr-matvec needs contiguous operands");
        };
        let CpuStorage::F32(x) = xs else {
            candle_core::bail!("azr-matvec: x must be f32");
        };
        let x = &x[xa..xb];
        #[cfg(target_arch = "x86_64")]
        let out = match ws {
            CpuStorage::F32(w) => product(x, m, &w[wa..wb], n, k),
            CpuStorage::BF16(w) => product(x, m, &w[wa..wb], n, k),
            _ => candle_core::bail!("azr-matvec: w must be f32 or bf16"),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let out: Vec<f32> = candle_core::bail!("azr-matvec runs on x86_64 only");
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// Output rows of `w` per task: a few per thread, in multiples of the 4-row tile.
fn task_rows(n: usize) -> usize {
    let per = n.div_ceil(rayon::current_num_threads() * 4);
    per.next_multiple_of(4).max(16)
}

#[cfg(target_arch = "x86_64")]
fn product<W: avx512::Load>(x: &[f32], m: usize, w: &[W], n: usize, k: usize) -> Vec<f32> {
    // Computed transposed, (n, m), so each task writes one contiguous run.
    let mut yt = vec![0f32; n * m];
    let rows = task_rows(n);
    yt.par_chunks_mut(rows * m)
        .zip(w.par_chunks(rows * k))
        // SAFETY: the caller (cpu_fwd) checked `cpu_supported`, and every slice holds whole
        // rows of length k (m rows of x, yt.len() / m rows of w).
        .for_each(|(yt, w)| unsafe { avx512::block(x, m, w, yt, k) });
    let mut y = vec![0f32; m * n];
    for (j, col) in yt.chunks_exact(m).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            y[i * n + j] = v;
        }
    }
    y
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// A weight element type loaded as 16 f32 lanes; `load_tail` loads the first bits of
    /// `mask` only.
    pub trait Load: Copy + Send + Sync {
        unsafe fn load(p: *const Self) -> __m512;
        unsafe fn load_tail(p: *const Self, mask: __mmask16) -> __m512;
    }

    impl Load for f32 {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn load_tail(p: *const f32, mask: __mmask16) -> __m512 {
            _mm512_maskz_loadu_ps(mask, p)
        }
    }

    /// bf16 is the top half of an f32: widen to 32 bits and shift left.
    impl Load for half::bf16 {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn load(p: *const half::bf16) -> __m512 {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn load_tail(p: *const half::bf16, mask: __mmask16) -> __m512 {
            let h = _mm256_maskz_loadu_epi16(mask, p as *const i16);
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
        }
    }

    /// yt (rows, m) = w (rows, k) · x (m, k)ᵀ, in tiles of up to 4 x-rows by 4 w-rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn block<W: Load>(x: &[f32], m: usize, w: &[W], yt: &mut [f32], k: usize) {
        let rows = yt.len() / m;
        let mut j = 0;
        while j < rows {
            let c = (rows - j).min(4);
            let mut i = 0;
            while i < m {
                let r = (m - i).min(4);
                macro_rules! tiles {
                    ($r:literal) => {
                        match c {
                            4 => tile::<W, $r, 4>(x, i, w, j, yt, m, k),
                            3 => tile::<W, $r, 3>(x, i, w, j, yt, m, k),
                            2 => tile::<W, $r, 2>(x, i, w, j, yt, m, k),
                            _ => tile::<W, $r, 1>(x, i, w, j, yt, m, k),
                        }
                    };
                }
                match r {
                    4 => tiles!(4),
                    3 => tiles!(3),
                    2 => tiles!(2),
                    _ => tiles!(1),
                }
                i += r;
            }
            j += c;
        }
    }

    /// R x-rows from `i` against C w-rows from `j`: R * C accumulators over k.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn tile<W: Load, const R: usize, const C: usize>(
        x: &[f32],
        i: usize,
        w: &[W],
        j: usize,
        yt: &mut [f32],
        m: usize,
        k: usize,
    ) {
        let xp = x.as_ptr().add(i * k);
        let wp = w.as_ptr().add(j * k);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let full = k / 16 * 16;
        let mut p = 0;
        while p < full {
            let mut wv = [_mm512_setzero_ps(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = W::load(wp.add(c * k + p));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(xp.add(r * k + p));
                for (a, v) in a.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *v, *a);
                }
            }
            p += 16;
        }
        if full < k {
            let mask: __mmask16 = (1u32 << (k - full)).wrapping_sub(1) as __mmask16;
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(mask, xp.add(r * k + p));
                for (c, a) in a.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(xv, W::load_tail(wp.add(c * k + p), mask), *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (c, a) in a.iter().enumerate() {
                yt[(j + c) * m + i + r] = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::max_abs_diff as max_diff;

    fn reference(x: &Tensor, w: &Tensor) -> Tensor {
        x.matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
            .unwrap()
    }

    #[test]
    fn matches_gemm_for_every_row_count_and_ragged_sizes() {
        if !cpu_supported() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        let dev = Device::Cpu;
        // k not a multiple of 16 and n not a multiple of 4 exercise every tail.
        for (n, k) in [(37, 67), (130, 576), (5, 8)] {
            let w = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
            for m in 1..=MAX_ROWS {
                let x = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
                assert!(usable(&x, &w));
                let got = matmul_nt(&x, &w).unwrap();
                assert!(
                    max_diff(&got, &reference(&x, &w)) < 1e-4,
                    "m={m} n={n} k={k}"
                );
                let wb = w.to_dtype(DType::BF16).unwrap();
                let got = matmul_nt(&x, &wb).unwrap();
                assert!(
                    max_diff(&got, &reference(&x, &wb)) < 1e-3,
                    "bf16 m={m} n={n} k={k}"
                );
            }
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_in_any_batch() {
        if !cpu_supported() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (300, 200), &dev).unwrap();
        let x = Tensor::randn(0f32, 1., (11, 200), &dev).unwrap();
        let all: Vec<Vec<f32>> = matmul_nt(&x, &w).unwrap().to_vec2().unwrap();
        for (i, row) in all.iter().enumerate() {
            let one: Vec<Vec<f32>> = matmul_nt(&x.narrow(0, i, 1).unwrap(), &w)
                .unwrap()
                .to_vec2()
                .unwrap();
            assert_eq!(&one[0], row, "row {i}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((8, 16), DType::F32, &dev).unwrap();
        assert!(!usable(
            &Tensor::zeros((0, 16), DType::F32, &dev).unwrap(),
            &w
        ));
        assert!(!usable(
            &Tensor::zeros((MAX_ROWS + 1, 16), DType::F32, &dev).unwrap(),
            &w
        ));
        assert!(!usable(
            &Tensor::zeros((2, 16), DType::F64, &dev).unwrap(),
            &w
        ));
    }
}
