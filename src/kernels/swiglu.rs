//! The MLP's gate `silu(g) ⊙ u` as one pass each way on the CPU. Composed of candle ops, the
//! forward is two passes (and the graph keeps silu(g) beside g and u), and the backward runs
//! silu's derivative as six more passes with a second exp, each gradient then added to a
//! zeroed tensor. Here the forward is one pass and the backward one pass for both gradients,
//! from g and u, which are all the graph keeps. Other devices and dtypes compose candle's ops.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use num_traits::Float;
use rayon::prelude::*;

use super::exp::Exps;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// `silu(g) ⊙ u` for g and u of one shape; differentiable with `grad`.
pub fn swiglu(g: &Tensor, u: &Tensor, grad: bool) -> Result<Tensor> {
    let fused = g.device().is_cpu()
        && matches!(g.dtype(), DType::F32 | DType::F64)
        && g.dtype() == u.dtype()
        && g.shape() == u.shape();
    if !fused {
        return g.silu()? * u;
    }
    let (g, u) = (g.contiguous()?, u.contiguous()?);
    match grad {
        true => g.apply_op2(&u, SwiGlu),
        false => g.apply_op2_no_bwd(&u, &SwiGlu),
    }
}

fn slice<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
        None => bail!("azr-swiglu: needs contiguous tensors"),
    }
}

/// sigmoid(g) of each element into `s`, its exps vectorised for f32 ([`Exps`]).
fn sigmoid<T: Float + Exps>(g: &[T], s: &mut [T]) {
    s.iter_mut().zip(g).for_each(|(s, &g)| *s = -g);
    T::exps(s, T::zero());
    s.iter_mut().for_each(|s| *s = T::one() / (T::one() + *s));
}

/// `out = silu(g) ⊙ u`, element by element (an element's bits do not depend on the slice's
/// length or where it sits in it).
fn gate_into<T: Float + Exps>(g: &[T], u: &[T], out: &mut [T]) {
    sigmoid(g, out);
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g * *o * u;
    }
}

/// [`gate_into`] of 16 lanes, with its bits: the same operations in the same order.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gate_lanes(
    g: std::arch::x86_64::__m512,
    u: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    // -g, then exp(-g - 0) as `T::exps(s, 0)` has it.
    let e = super::exp::avx512::exp(_mm512_sub_ps(_mm512_sub_ps(zero, g), zero));
    let one = _mm512_set1_ps(1.0);
    let s = _mm512_div_ps(one, _mm512_add_ps(one, e));
    _mm512_mul_ps(_mm512_mul_ps(g, s), u)
}

/// Gate and up values a block in the rows of [`gate_blocks`].
pub const BLOCK: usize = 16;

/// [`swiglu`] without grad of rows of `width` values that alternate [`BLOCK`] gate values and
/// [`BLOCK`] up values, as one product by the gate and up matrices stacked that way gives
/// them: rows of width / 2, the same bits as [`swiglu`] of the gate and up values apart.
/// (Stacked by blocks rather than one matrix after the other, the AMX product gates its own
/// sums: [`crate::kernels::amx::gated_product`].)
pub(crate) fn gate_blocks(y: &[f32], width: usize) -> Vec<f32> {
    let mut out = vec![0f32; y.len() / 2];
    out.par_chunks_mut(width / 2)
        .zip(y.par_chunks(width))
        .for_each(|(out, row)| {
            for (out, pair) in out.chunks_exact_mut(BLOCK).zip(row.chunks_exact(2 * BLOCK)) {
                gate_into(&pair[..BLOCK], &pair[BLOCK..], out);
            }
        });
    out
}

/// d/dg and d/du of silu(g) u, times the output's gradient d, with s = sigmoid(g).
fn gradients<T: Float>(g: T, s: T, u: T, d: T) -> (T, T) {
    (d * u * s * (T::one() + g * (T::one() - s)), d * g * s)
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "azr-swiglu"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: candle_core::WithDType + Float + Exps>(
            g: &CpuStorage,
            gl: &Layout,
            u: &CpuStorage,
            ul: &Layout,
        ) -> Result<CpuStorage> {
            let (g, u) = (slice::<T>(g, gl)?, slice::<T>(u, ul)?);
            let mut out = vec![T::zero(); g.len()];
            out.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
                .for_each(|(out, (g, u))| gate_into(g, u, out));
            Ok(T::to_cpu_storage_owned(out))
        }
        let out = match g {
            CpuStorage::F32(_) => run::<f32>(g, gl, u, ul)?,
            _ => run::<f64>(g, gl, u, ul)?,
        };
        Ok((out, gl.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _: &Tensor,
        d: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = gradients_of(g, u, d)?;
        Ok((Some(dg), Some(du)))
    }
}

/// The gradients of `silu(g) ⊙ u` with respect to g and u given the output's gradient d, for
/// contiguous f32/f64 CPU g and u of one shape (those [`swiglu`] fuses).
pub fn gradients_of(g: &Tensor, u: &Tensor, d: &Tensor) -> Result<(Tensor, Tensor)> {
    // One pass writes both gradients, stacked: (2, ..).
    let both = g
        .detach()
        .apply_op3_no_bwd(&u.detach(), &d.contiguous()?, &SwiGluGrad)?;
    Ok((both.get(0)?, both.get(1)?))
}

struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "azr-swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
        d: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        #[allow(clippy::too_many_arguments)]
        fn run<T: candle_core::WithDType + Float + Exps>(
            g: &CpuStorage,
            gl: &Layout,
            u: &CpuStorage,
            ul: &Layout,
            d: &CpuStorage,
            dl: &Layout,
        ) -> Result<CpuStorage> {
            let (g, u, d) = (slice::<T>(g, gl)?, slice::<T>(u, ul)?, slice::<T>(d, dl)?);
            let n = g.len();
            if u.len() != n || d.len() != n {
                bail!(
                    "azr-swiglu-grad: operands of {n}, {} and {} elements",
                    u.len(),
                    d.len()
                );
            }
            let mut out: Vec<T> = Vec::with_capacity(2 * n);
            let (dg, du) = out.spare_capacity_mut()[..2 * n].split_at_mut(n);
            dg.par_chunks_mut(CHUNK)
                .zip(du.par_chunks_mut(CHUNK))
                .zip(
                    g.par_chunks(CHUNK)
                        .zip(u.par_chunks(CHUNK))
                        .zip(d.par_chunks(CHUNK)),
                )
                .for_each_init(
                    || vec![T::zero(); CHUNK],
                    |s, ((dg, du), ((g, u), d))| {
                        let s = &mut s[..g.len()];
                        sigmoid(g, s);
                        for i in 0..g.len() {
                            let (a, b) = gradients(g[i], s[i], u[i], d[i]);
                            dg[i].write(a);
                            du[i].write(b);
                        }
                    },
                );
            // SAFETY: the loop above wrote all 2n elements.
            unsafe { out.set_len(2 * n) };
            Ok(T::to_cpu_storage_owned(out))
        }
        let out = match g {
            CpuStorage::F32(_) => run::<f32>(g, gl, u, ul, d, dl)?,
            _ => run::<f64>(g, gl, u, ul, d, dl)?,
        };
        let mut dims = vec![2];
        dims.extend_from_slice(gl.dims());
        Ok((out, Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{bits, tensor_bits};
    use candle_core::Device;

    #[test]
    fn blocks_give_the_bits_of_the_op_on_separate_gate_and_up() {
        let dev = Device::Cpu;
        let (n, blocks) = (3 * BLOCK, 3);
        let y = Tensor::randn(0f32, 2., (4, 2 * n), &dev).unwrap();
        // Block j of the gate is y's block 2j, of up block 2j + 1.
        let part = |first: usize| {
            let parts: Vec<Tensor> = (0..blocks)
                .map(|j| y.narrow(1, (2 * j + first) * BLOCK, BLOCK).unwrap())
                .collect();
            Tensor::cat(&parts, 1).unwrap()
        };
        let want = swiglu(&part(0), &part(1), false).unwrap();
        let got = gate_blocks(&y.flatten_all().unwrap().to_vec1().unwrap(), 2 * n);
        assert_eq!(bits(&got), tensor_bits(&want));
    }

    /// Values and both gradients match candle's composed silu(g) * u, in f64 and f32.
    #[test]
    fn matches_the_composed_op_both_ways() {
        // max_abs_diff compares in f32; the model's f64 finite-difference checks go through
        // this op too.
        for dtype in [DType::F64, DType::F32] {
            let dev = Device::Cpu;
            let random = |std: f64| {
                let t = Tensor::randn(0f64, std, (3, 5, 7), &dev).unwrap();
                candle_core::Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
            };
            let (g, u, w) = (random(2.0), random(1.0), random(1.0));
            let w = w.as_tensor();
            let objective = |y: Tensor| (y * w).unwrap().sum_all().unwrap();
            let fused = swiglu(&g, &u, true).unwrap();
            let composed = (g.silu().unwrap() * u.as_tensor()).unwrap();
            let diff = |a: &Tensor, b: &Tensor| crate::kernels::max_abs_diff(a, b) as f64;
            let tol = 1e-5;
            assert!(diff(&fused, &composed) < tol);
            assert!(diff(&swiglu(&g, &u, false).unwrap(), &composed) < tol);
            let (fg, cg) = (
                objective(fused).backward().unwrap(),
                objective(composed).backward().unwrap(),
            );
            for v in [&g, &u] {
                let d = diff(fg.get(v).unwrap(), cg.get(v).unwrap());
                assert!(d < tol, "{dtype:?}: gradient differs by {d}");
            }
        }
    }
}
