//! Attention's `softmax(scores + mask)` on the CPU, in place over the scores. Composed of
//! candle ops it is two more (heads x t x T) tensors per call, the masked scores and the
//! probabilities, each fresh from the allocator (page faults and zeroing) and each one more
//! pass over memory; an update's pass over a 1,600-token row makes 143 MB of each per layer,
//! twice (forward, and again when backward recomputes the probabilities).

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Replaces contiguous f32 CPU `scores` (b, heads, rows, T) with softmax(scores + mask) over
/// the last dim and returns true; returns false, scores untouched, for any other tensor. `mask`
/// (1 or b, 1, t, T) is additive and broadcast over heads and over the `rows / t` query groups
/// stacked in the rows (row r takes mask row r % t).
pub fn in_place(scores: &Tensor, mask: Option<&Tensor>) -> Result<bool> {
    let f32_cpu = |t: &Tensor| {
        t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous()
    };
    if !f32_cpu(scores) || !mask.is_none_or(f32_cpu) {
        return Ok(false);
    }
    let (b, _, rows, total) = scores.dims4()?;
    if let Some(m) = mask {
        mask_rows(m, b, rows, total).map_err(|e| e.context("masked softmax"))?;
    }
    scores.inplace_op1(&MaskedSoftmax {
        mask: mask.cloned(),
    })?;
    Ok(true)
}

/// The rows t of an additive attention mask (1 or b, 1, t, T) for b batch rows of `rows` query
/// rows a head (t divides them: row r takes mask row r % t) and T = `total` keys; an error when
/// it does not fit them.
pub(super) fn mask_rows(mask: &Tensor, b: usize, rows: usize, total: usize) -> Result<usize> {
    let (mb, one, t, mt) = mask.dims4()?;
    if !(mb == 1 || mb == b) || one != 1 || mt != total || t == 0 || !rows.is_multiple_of(t) {
        candle_core::bail!(
            "mask {:?} does not fit {b} batch rows of {rows} query rows and {total} keys",
            mask.dims()
        );
    }
    Ok(t)
}

/// `scores + mask` with candle's ops, for the tensors [`in_place`] leaves alone: the mask
/// broadcast over heads and over the query groups stacked in the rows.
pub fn masked(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, heads, rows, total) = scores.dims4()?;
    let t = mask.dim(2)?;
    scores
        .reshape((b, heads, rows / t, t, total))?
        .broadcast_add(&mask.unsqueeze(2)?)?
        .reshape((b, heads, rows, total))
}

struct MaskedSoftmax {
    mask: Option<Tensor>,
}

impl InplaceOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "azr-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (CpuStorage::F32(values), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("azr-masked-softmax: needs contiguous f32 scores");
        };
        let (_, heads, rows, total) = layout.shape().dims4()?;
        let scores = &mut values[start..end];
        let Some(mask) = &self.mask else {
            scores
                .par_chunks_mut(total)
                .for_each(|row| softmax(row, None));
            return Ok(());
        };
        let (mb, _, t, _) = mask.dims4()?;
        let (storage, layout) = mask.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(m)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("azr-masked-softmax: needs a contiguous f32 mask");
        };
        let m = &m[a..b];
        scores
            .par_chunks_mut(total)
            .enumerate()
            .for_each(|(i, row)| {
                let batch = if mb == 1 { 0 } else { i / (heads * rows) };
                let at = (batch * t + (i % rows) % t) * total;
                softmax(row, Some(&m[at..at + total]));
            });
        Ok(())
    }
}

/// One row, as candle's softmax computes it: the maximum (in lanes, exact either way),
/// `exp(x - max)` (vectorised, within 2 ulp of libm's), their sequential sum, and each
/// divided by it.
pub(super) fn softmax(row: &mut [f32], mask: Option<&[f32]>) {
    if let Some(mask) = mask {
        row.iter_mut().zip(mask).for_each(|(x, m)| *x += m);
    }
    let max = super::reduce::max(row);
    super::exp::shifted_in_place(row, max);
    // A sequential sum: masked keys add exact zeros wherever padding puts them.
    let sum: f32 = row.iter().sum();
    row.iter_mut().for_each(|x| *x /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The composed ops attention falls back to: [`masked`], then candle's softmax.
    fn composed(scores: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let s = match mask {
            Some(m) => masked(scores, m).unwrap(),
            None => scores.clone(),
        };
        candle_nn::ops::softmax_last_dim(&s).unwrap()
    }

    #[test]
    fn matches_the_composed_ops_for_every_mask_shape() {
        let dev = Device::Cpu;
        let causal = |b: usize, t: usize, total: usize| {
            let m: Vec<f32> = (0..b * t * total)
                .map(|i| {
                    let (row, col, batch) = ((i / total) % t, i % total, i / (t * total));
                    // Keys after the row's position masked; the second batch row starts one
                    // column later (a padded row) where there are columns to spare.
                    let shift = usize::from(total > t && batch % 2 == 1);
                    match col + shift <= row + total - t {
                        true => 0.0,
                        false => f32::NEG_INFINITY,
                    }
                })
                .collect();
            Tensor::from_vec(m, (b, 1, t, total), &dev).unwrap()
        };
        for (b, h, groups, t, total, mb) in
            [(1, 2, 1, 5, 5, 1), (2, 3, 2, 4, 7, 2), (2, 2, 3, 3, 6, 1)]
        {
            let scores = Tensor::randn(0f32, 3., (b, h, groups * t, total), &dev).unwrap();
            for mask in [None, Some(causal(mb, t, total))] {
                let want = composed(&scores, mask.as_ref());
                let got = scores.copy().unwrap();
                assert!(in_place(&got, mask.as_ref()).unwrap());
                let diff = crate::kernels::max_abs_diff(&got, &want);
                assert!(diff < 1e-6, "b={b} h={h} t={t} T={total}: {diff}");
            }
        }
    }

    #[test]
    fn leaves_other_tensors_to_the_composed_ops() {
        let dev = Device::Cpu;
        let scores = Tensor::randn(0f32, 1., (1, 2, 3, 3), &dev).unwrap();
        let bf16 = scores.to_dtype(DType::BF16).unwrap();
        assert!(!in_place(&bf16, None).unwrap());
        let strided = scores.transpose(2, 3).unwrap();
        assert!(!in_place(&strided, None).unwrap());
        let mask = Tensor::zeros((1, 1, 2, 3), DType::F32, &dev).unwrap();
        assert!(
            in_place(&scores, Some(&mask)).is_err(),
            "3 rows, mask rows 2"
        );
    }
}
