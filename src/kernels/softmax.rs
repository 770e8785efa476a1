//! The LM head's softmax statistics on the CPU, fused per row: log p(target) and the entropy
//! in forward, and for the gradient the coefficients C = (onehot(target) - p) / t, written over
//! the logits. Composed of candle ops this is about ten passes over each (positions x
//! vocabulary) tensor with two `exp`s per element (log-softmax, then p = exp(log p), then C);
//! here it is a few passes over a row that stays in cache, with one `exp` per element.

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

use super::exp::Exps;

/// What [`fused`] computes for logits (n, vocab) at temperature t.
pub struct HeadStats {
    /// log p(target) under softmax(logits / t): (n,).
    pub logp_target: Tensor,
    /// The entropy of that distribution: (n,).
    pub entropy: Tensor,
}

/// The statistics of contiguous f32/f64 CPU logits; None for any other tensor (the caller
/// composes candle's ops instead).
pub fn fused(logits: &Tensor, targets: &[u32], t: f64) -> Result<Option<HeadStats>> {
    let (n, v) = logits.dims2()?;
    let (storage, layout) = logits.storage_and_layout();
    let (Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    check_targets(targets, n, v)?;
    let device = logits.device();
    Ok(Some(match (cpu, logits.dtype()) {
        (CpuStorage::F32(z), DType::F32) => tensors(rows(&z[a..b], v, targets, t), device)?,
        (CpuStorage::F64(z), DType::F64) => tensors(rows(&z[a..b], v, targets, t), device)?,
        _ => return Ok(None),
    }))
}

fn tensors<T: WithDType>(
    (value, entropy): (Vec<T>, Vec<T>),
    device: &candle_core::Device,
) -> Result<HeadStats> {
    let n = value.len();
    Ok(HeadStats {
        logp_target: Tensor::from_vec(value, n, device)?,
        entropy: Tensor::from_vec(entropy, n, device)?,
    })
}

fn check_targets(targets: &[u32], n: usize, v: usize) -> Result<()> {
    if targets.len() != n || targets.iter().any(|&id| id as usize >= v) {
        candle_core::bail!(
            "head softmax: {} targets for {n} rows of {v}",
            targets.len()
        );
    }
    Ok(())
}

/// Per row: (log p(target), entropy).
fn rows<T: WithDType + Float + num_traits::NumAssign + Exps>(
    z: &[T],
    v: usize,
    targets: &[u32],
    t: f64,
) -> (Vec<T>, Vec<T>) {
    let inv_t = T::from_f64(1.0 / t);
    z.par_chunks(v)
        .zip(targets)
        .map_init(
            || vec![T::zero(); v],
            |e, (row, &target)| {
                e.copy_from_slice(row);
                let max = shifted_exps(e, inv_t);
                let (mut sum, mut weighted) = (T::zero(), T::zero());
                for (&e, &x) in e.iter().zip(row) {
                    sum += e;
                    weighted += e * (x * inv_t);
                }
                let log_z = max + sum.ln();
                (row[target as usize] * inv_t - log_z, log_z - weighted / sum)
            },
        )
        .unzip()
}

/// `row = exp(row / t - max)` in place, max over `row / t`, which it returns.
fn shifted_exps<T: WithDType + Float + num_traits::NumAssign + Exps>(row: &mut [T], inv_t: T) -> T {
    let max = super::reduce::max(row) * inv_t;
    row.iter_mut().for_each(|x| *x *= inv_t);
    T::exps(row, max);
    max
}

/// Overwrites contiguous CPU logits (n, vocab) with each row's coefficients
/// C = (onehot(target) - p) / t, p = softmax(logits / t), times `g` (n,), the row's output
/// gradient: the gradient of log p(target) with respect to the logits, without a second
/// (n, vocab) buffer (78 MB for 128 rows of Qwen's head).
pub fn scaled_coefficients_in_place(
    logits: &Tensor,
    targets: &[u32],
    t: f64,
    g: &Tensor,
) -> Result<()> {
    let (n, v) = logits.dims2()?;
    check_targets(targets, n, v)?;
    if g.dims() != [n] {
        candle_core::bail!("head coefficients: gradient {:?} for {n} rows", g.dims());
    }
    let g = g.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    logits.inplace_op1(&ScaledCoefficients { targets, t, g: &g })
}

struct ScaledCoefficients<'a> {
    targets: &'a [u32],
    t: f64,
    g: &'a [f64],
}

impl ScaledCoefficients<'_> {
    fn rows<T: WithDType + Float + num_traits::NumAssign + Exps>(&self, z: &mut [T], v: usize) {
        let inv_t = T::from_f64(1.0 / self.t);
        z.par_chunks_mut(v)
            .zip(self.targets.par_iter().zip(self.g))
            .for_each(|(row, (&target, &g))| {
                shifted_exps(row, inv_t);
                let mut sum = T::zero();
                row.iter().for_each(|&e| sum += e);
                let scale = -inv_t / sum;
                row.iter_mut().for_each(|c| *c *= scale);
                row[target as usize] += inv_t;
                let g = T::from_f64(g);
                row.iter_mut().for_each(|c| *c *= g);
            });
    }
}

impl candle_core::InplaceOp1 for ScaledCoefficients<'_> {
    fn name(&self) -> &'static str {
        "azr-head-coefficients"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (Some((a, b)), &[_, v]) = (layout.contiguous_offsets(), layout.dims()) else {
            candle_core::bail!("head coefficients: logits must be contiguous (n, vocab)");
        };
        match storage {
            CpuStorage::F32(z) => self.rows(&mut z[a..b], v),
            CpuStorage::F64(z) => self.rows(&mut z[a..b], v),
            _ => candle_core::bail!("head coefficients: needs f32 or f64 logits"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// Matches candle's composed log-softmax, entropy and onehot - p, in f64 and f32.
    #[test]
    fn matches_the_composed_statistics() {
        let dev = Device::Cpu;
        let targets = [3u32, 0, 6, 6];
        let t = 0.7;
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let logits = (Tensor::randn(0f64, 3., (4, 7), &dev).unwrap())
                .to_dtype(dtype)
                .unwrap();
            let got = fused(&logits, &targets, t).unwrap().expect("CPU float");
            let logp = candle_nn::ops::log_softmax(&(&logits / t).unwrap(), D::Minus1).unwrap();
            let p = logp.exp().unwrap();
            let ids = Tensor::new(&targets, &dev).unwrap().unsqueeze(1).unwrap();
            let value = logp.gather(&ids, 1).unwrap().squeeze(1).unwrap();
            let entropy = (&p * &logp).unwrap().sum(D::Minus1).unwrap().neg().unwrap();
            let onehot = Tensor::zeros((4, 7), dtype, &dev).unwrap();
            let ones = Tensor::ones((4, 1), dtype, &dev).unwrap();
            let onehot = onehot.scatter_add(&ids, &ones, 1).unwrap();
            let g = Tensor::new(&[0.5f64, -2.0, 1.0, 3.0], &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let c = ((onehot - p).unwrap() / t)
                .unwrap()
                .broadcast_mul(&g.unsqueeze(1).unwrap())
                .unwrap();
            let in_place = logits.copy().unwrap();
            scaled_coefficients_in_place(&in_place, &targets, t, &g).unwrap();
            let f64s = |t: &Tensor| -> Vec<f64> {
                let t = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
                t.to_vec1().unwrap()
            };
            for (name, a, b) in [
                ("log p", &got.logp_target, &value),
                ("entropy", &got.entropy, &entropy),
                ("g C", &in_place, &c),
            ] {
                let d = f64s(a)
                    .iter()
                    .zip(f64s(b))
                    .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                assert!(d < tol, "{dtype:?} {name}: differs by {d:.2e}");
            }
        }
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_an_error() {
        let logits = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(fused(&logits, &[4], 1.0).is_err());
        assert!(fused(&logits, &[1, 2], 1.0).is_err());
        let g = Tensor::ones(1, DType::F32, &Device::Cpu).unwrap();
        assert!(scaled_coefficients_in_place(&logits, &[4], 1.0, &g).is_err());
        assert!(scaled_coefficients_in_place(&logits, &[1], 1.0, &g.repeat(2).unwrap()).is_err());
    }
}
