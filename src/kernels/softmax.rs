//! The LM head's softmax statistics on the CPU, fused per row: log p(target), the entropy and,
//! for the gradient, the coefficients C = (onehot(target) - p) / t. Composed of candle ops this
//! is about ten passes over each (positions x vocabulary) tensor with two `exp`s per element
//! (log-softmax, then p = exp(log p), then C); here it is three passes over a row that stays in
//! cache, with one `exp` per element.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

use super::exp::Exps;

/// What [`fused`] computes for logits (n, vocab) at temperature t.
pub struct HeadStats {
    /// log p(target) under softmax(logits / t): (n,).
    pub logp_target: Tensor,
    /// The entropy of that distribution: (n,).
    pub entropy: Tensor,
    /// (onehot(target) - p) / t: (n, vocab), when asked for.
    pub coefficients: Option<Tensor>,
}

/// The statistics of contiguous f32/f64 CPU logits; None for any other tensor (the caller
/// composes candle's ops instead).
pub fn fused(
    logits: &Tensor,
    targets: &[u32],
    t: f64,
    coefficients: bool,
) -> Result<Option<HeadStats>> {
    let (n, v) = logits.dims2()?;
    let (storage, layout) = logits.storage_and_layout();
    let (Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) else {
        return Ok(None);
    };
    if targets.len() != n || targets.iter().any(|&id| id as usize >= v) {
        candle_core::bail!(
            "head softmax: {} targets for {n} rows of {v}",
            targets.len()
        );
    }
    let device = logits.device();
    Ok(Some(match (cpu, logits.dtype()) {
        (CpuStorage::F32(z), DType::F32) => {
            tensors(rows(&z[a..b], v, targets, t, coefficients), v, device)?
        }
        (CpuStorage::F64(z), DType::F64) => {
            tensors(rows(&z[a..b], v, targets, t, coefficients), v, device)?
        }
        _ => return Ok(None),
    }))
}

fn tensors<T: WithDType>(
    (value, entropy, c): Columns<T>,
    v: usize,
    device: &candle_core::Device,
) -> Result<HeadStats> {
    let n = value.len();
    Ok(HeadStats {
        logp_target: Tensor::from_vec(value, n, device)?,
        entropy: Tensor::from_vec(entropy, n, device)?,
        coefficients: c.map(|c| Tensor::from_vec(c, (n, v), device)).transpose()?,
    })
}

type Columns<T> = (Vec<T>, Vec<T>, Option<Vec<T>>);

fn rows<T: WithDType + Float + num_traits::NumAssign + Exps>(
    z: &[T],
    v: usize,
    targets: &[u32],
    t: f64,
    coefficients: bool,
) -> Columns<T> {
    let inv_t = T::from_f64(1.0 / t);
    // Per row: (log p(target), entropy). `e` (C itself when asked for) takes exp(x / t - max),
    // then C's values.
    let stats = |row: &[T], target: usize, e: &mut [T], c: bool| -> (T, T) {
        let max = row.iter().fold(T::neg_infinity(), |m, &x| Float::max(m, x)) * inv_t;
        e.iter_mut().zip(row).for_each(|(e, &x)| *e = x * inv_t);
        T::exps(e, max);
        let (mut sum, mut weighted) = (T::zero(), T::zero());
        for (&e, &x) in e.iter().zip(row) {
            sum += e;
            weighted += e * (x * inv_t);
        }
        if c {
            let scale = -inv_t / sum;
            e.iter_mut().for_each(|o| *o *= scale);
            e[target] += inv_t;
        }
        let log_z = max + sum.ln();
        (row[target] * inv_t - log_z, log_z - weighted / sum)
    };
    let n = targets.len();
    let (values, entropies): (Vec<T>, Vec<T>);
    let mut c = coefficients.then(|| vec![T::zero(); n * v]);
    match c.as_mut() {
        Some(c) => {
            (values, entropies) = c
                .par_chunks_mut(v)
                .zip(z.par_chunks(v).zip(targets))
                .map(|(c, (row, &target))| stats(row, target as usize, c, true))
                .unzip()
        }
        None => {
            (values, entropies) = z
                .par_chunks(v)
                .zip(targets)
                .map_init(
                    || vec![T::zero(); v],
                    |e, (row, &target)| stats(row, target as usize, e, false),
                )
                .unzip()
        }
    }
    (values, entropies, c)
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
            let got = fused(&logits, &targets, t, true)
                .unwrap()
                .expect("CPU float");
            let logp = candle_nn::ops::log_softmax(&(&logits / t).unwrap(), D::Minus1).unwrap();
            let p = logp.exp().unwrap();
            let ids = Tensor::new(&targets, &dev).unwrap().unsqueeze(1).unwrap();
            let value = logp.gather(&ids, 1).unwrap().squeeze(1).unwrap();
            let entropy = (&p * &logp).unwrap().sum(D::Minus1).unwrap().neg().unwrap();
            let onehot = Tensor::zeros((4, 7), dtype, &dev).unwrap();
            let ones = Tensor::ones((4, 1), dtype, &dev).unwrap();
            let onehot = onehot.scatter_add(&ids, &ones, 1).unwrap();
            let c = ((onehot - p).unwrap() / t).unwrap();
            let f64s = |t: &Tensor| -> Vec<f64> {
                let t = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
                t.to_vec1().unwrap()
            };
            let without_c = fused(&logits, &targets, t, false).unwrap().unwrap();
            for (name, a, b) in [
                ("log p", &got.logp_target, &value),
                ("entropy", &got.entropy, &entropy),
                ("log p without C", &without_c.logp_target, &value),
                ("entropy without C", &without_c.entropy, &entropy),
                ("C", got.coefficients.as_ref().unwrap(), &c),
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
        assert!(fused(&logits, &[4], 1.0, false).is_err());
        assert!(fused(&logits, &[1, 2], 1.0, false).is_err());
    }
}
