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

/// `out = silu(g) ⊙ u`, element by element.
fn gate_into<T: Float + Exps>(g: &[T], u: &[T], out: &mut [T]) {
    sigmoid(g, out);
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g * *o * u;
    }
}

/// [`swiglu`] without grad of `y` (.., 2n) whose rows each hold g then u, as one product by
/// the gate and up matrices stacked gives them: (.., n), the same bits as [`swiglu`] of the
/// halves, without copying them apart first.
pub fn halves(y: &Tensor) -> Result<Tensor> {
    let width = y.dim(candle_core::D::Minus1)?;
    let n = width / 2;
    let mut dims = y.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    if width % 2 != 0 {
        bail!("azr-swiglu: rows of odd width {width} do not split into gate and up");
    }
    let (storage, layout) = y.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::F32(values)), Some((a, b))) => {
            let mut out = vec![0f32; (b - a) / 2];
            out.par_chunks_mut(n.max(1))
                .zip(values[a..b].par_chunks(width.max(1)))
                .for_each(|(out, row)| gate_into(&row[..n], &row[n..], out));
            Tensor::from_vec(out, dims, y.device())
        }
        _ => {
            drop(storage);
            let half = |at| y.narrow(candle_core::D::Minus1, at, n);
            swiglu(&half(0)?, &half(n)?, false)
        }
    }
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
    use candle_core::Device;

    #[test]
    fn halves_give_the_bits_of_the_op_on_separate_gate_and_up() {
        let dev = Device::Cpu;
        let y = Tensor::randn(0f32, 2., (2, 3, 2 * 37), &dev).unwrap();
        let want = swiglu(
            &y.narrow(2, 0, 37).unwrap().contiguous().unwrap(),
            &y.narrow(2, 37, 37).unwrap().contiguous().unwrap(),
            false,
        )
        .unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        let got = halves(&y).unwrap();
        assert_eq!(got.dims(), &[2, 3, 37]);
        assert_eq!(bits(&got), bits(&want));
        // A view (not contiguous) takes the composed way, with the same bits.
        let wide = Tensor::cat(&[&y, &y], 2)
            .unwrap()
            .narrow(2, 0, 2 * 37)
            .unwrap();
        assert_eq!(bits(&halves(&wide).unwrap()), bits(&want));
        assert!(halves(&y.narrow(2, 0, 5).unwrap()).is_err(), "odd width");
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
