//! Scaled dot-product attention over grouped queries, `softmax(q kᵀ + mask) v`, whose backward
//! recomputes the probabilities instead of keeping them.
//!
//! Composed of candle ops, training keeps three (heads x t x T) tensors per layer alive until
//! backward (the scores, the masked scores and the probabilities): for Qwen2.5-0.5B on a
//! 1,000-token sequence that is 4 GB across its 24 layers. [`attend`] with `grad` keeps only q,
//! k, v and the output, and recomputes the probabilities per layer in backward (one more
//! q·kᵀ product per layer, as flash attention does). Both go block by block of query positions,
//! each block meeting only the keys its causal mask lets it see.

use candle_core::{Result, Tensor, D};

use super::ops::Precomputed;

/// The rows of one attention call: q (b, kv_heads, rep * t, d), already scaled by 1/sqrt(d),
/// the `rep` query heads of a kv head stacked as rows; k and v (b, kv_heads, T, d); mask
/// broadcastable to (b, 1, t, T), additive, hiding at least every key after a row's own
/// position T - t + i. Returns (b, kv_heads, rep * t, d). Without `grad`, a decode step's few
/// query rows a kv head go to [`crate::kernels::decode_attention`], and a prompt pass's go
/// block by block as training's do.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    grad: bool,
) -> Result<Tensor> {
    if !grad {
        if let Some(out) = crate::kernels::decode_attention::attend(q, k, v, mask)? {
            return Ok(out);
        }
        return blocked(q, k, v, mask);
    }
    let mask = mask.map(Tensor::detach);
    let out = blocked(&q.detach(), &k.detach(), &v.detach(), mask.as_ref())?;
    q.apply_op3(
        k,
        v,
        Attention {
            mask,
            out: Precomputed::new(out),
        },
    )
}

/// The output without a graph, block by block of query positions.
fn blocked(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let blocks = Blocks::of(q, k, mask, BLOCK)?;
    let outs = blocks
        .iter()
        .map(|b| {
            let p = probabilities(&b.rows(q)?, &b.keys(k)?, b.mask(mask)?.as_ref())?;
            p.matmul(&b.keys(v)?)
        })
        .collect::<Result<Vec<_>>>()?;
    blocks.join(&outs)
}

/// Query positions per block of attention (prompt passes and training).
const BLOCK: usize = 128;

/// A pass's query positions in blocks, each block meeting the keys up to its own
/// last position only: the mask hides the rest of its scores, so about half of the pass's
/// attention products (and of the scores held at once) are skipped. Every mask azr builds
/// hides the keys after a row's position (causal, or packed completions that see their prompt
/// and not each other); without a mask every row sees every key.
struct Blocks {
    /// (b, kv_heads, rep, t, d): q's rows are `rep` query heads of t positions each.
    dims: (usize, usize, usize, usize, usize),
    /// Key positions in all.
    total: usize,
    /// (first query position, positions, keys seen) of each block.
    spans: Vec<(usize, usize, usize)>,
}

struct Block<'a> {
    of: &'a Blocks,
    start: usize,
    len: usize,
    seen: usize,
}

impl Blocks {
    fn of(q: &Tensor, k: &Tensor, mask: Option<&Tensor>, block: usize) -> Result<Self> {
        let (b, kv_heads, rows, d) = q.dims4()?;
        let total = k.dim(2)?;
        let Some(t) = mask.map(|m| m.dim(2)).transpose()? else {
            return Ok(Self {
                dims: (b, kv_heads, 1, rows, d),
                total,
                spans: vec![(0, rows, total)],
            });
        };
        if t == 0 || rows % t != 0 || t > total {
            candle_core::bail!(
                "attention: a mask of {t} rows does not fit {rows} query rows and {total} keys"
            );
        }
        let offset = total - t;
        let spans = (0..t)
            .step_by(block)
            .map(|s| (s, block.min(t - s), offset + s + block.min(t - s)))
            .collect();
        Ok(Self {
            dims: (b, kv_heads, rows / t, t, d),
            total,
            spans,
        })
    }

    fn iter(&self) -> impl Iterator<Item = Block<'_>> {
        self.spans.iter().map(move |&(start, len, seen)| Block {
            of: self,
            start,
            len,
            seen,
        })
    }

    /// Blocks' rows (b, kv_heads, rep * len, d) back in q's row order (b, kv_heads, rep * t, d).
    fn join(&self, parts: &[Tensor]) -> Result<Tensor> {
        let (b, h, rep, t, d) = self.dims;
        let parts = self
            .spans
            .iter()
            .zip(parts)
            .map(|(&(_, len, _), x)| x.reshape((b, h, rep, len, d)))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 3)?.reshape((b, h, rep * t, d))
    }
}

impl Block<'_> {
    /// This block's rows of x (b, kv_heads, rep * t, d): (b, kv_heads, rep * len, d).
    fn rows(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, rep, t, d) = self.of.dims;
        x.reshape((b, h, rep, t, d))?
            .narrow(3, self.start, self.len)?
            .reshape((b, h, rep * self.len, d))
    }

    /// The keys (or values) this block's positions may see.
    fn keys(&self, x: &Tensor) -> Result<Tensor> {
        x.narrow(2, 0, self.seen)
    }

    fn mask(&self, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
        mask.map(|m| {
            m.narrow(2, self.start, self.len)?
                .narrow(3, 0, self.seen)?
                .contiguous()
        })
        .transpose()
    }

    /// x (b, kv_heads, seen, d) with zero rows after it, to the keys' full length.
    fn widen(&self, x: &Tensor) -> Result<Tensor> {
        x.pad_with_zeros(2, 0, self.of.total - self.seen)
    }
}

/// softmax(q kᵀ + mask) over the last dim: (b, kv_heads, rep * t, T).
fn probabilities(q: &Tensor, k: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let scores = q.matmul(&k.t()?)?;
    if crate::kernels::masked_softmax::in_place(&scores, mask)? {
        return Ok(scores);
    }
    let scores = match mask {
        Some(m) => crate::kernels::masked_softmax::masked(&scores, m)?,
        None => scores,
    };
    // In at least f32, as bf16 sums of thousands of probabilities would drift.
    let dtype = scores.dtype();
    candle_nn::ops::softmax_last_dim(&scores.to_dtype(super::ops::accumulate_dtype(dtype))?)?
        .to_dtype(dtype)
}

/// The op [`attend`] applies with `grad`: its forward is the output computed without a graph,
/// its backward recomputes the probabilities.
struct Attention {
    mask: Option<Tensor>,
    out: Precomputed,
}

impl candle_core::CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "azr-attention"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.out.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
        _: &candle_core::CudaStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        self.out.cuda()
    }

    /// With P the probabilities and O = P v: dv = Pᵀ dO, dS = P ⊙ (dO vᵀ - rowsum(dO ⊙ O)),
    /// dq = dS k, dk = dSᵀ q, block by block of query positions ([`Blocks`]).
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, out) = (q.detach(), k.detach(), v.detach(), out.detach());
        let blocks = Blocks::of(&q, &k, self.mask.as_ref(), BLOCK)?;
        let mut dq = Vec::new();
        let (mut dk, mut dv) = (k.zeros_like()?, v.zeros_like()?);
        for b in blocks.iter() {
            let (qb, kb, vb, grad) = (b.rows(&q)?, b.keys(&k)?, b.keys(&v)?, b.rows(grad)?);
            let p = probabilities(&qb, &kb, b.mask(self.mask.as_ref())?.as_ref())?;
            dv = (dv + b.widen(&p.t()?.matmul(&grad)?)?)?;
            let rowsum = (&grad * b.rows(&out)?)?.sum_keepdim(D::Minus1)?;
            let ds = (p * grad.matmul(&vb.t()?)?.broadcast_sub(&rowsum)?)?;
            dq.push(ds.matmul(&kb)?);
            dk = (dk + b.widen(&ds.t()?.matmul(&qb)?)?)?;
        }
        let dq = blocks.join(&dq)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// softmax(q kᵀ + mask) v of candle's composed ops, differentiated by candle.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let scores = crate::kernels::masked_softmax::masked(&q.matmul(&k.t()?)?, mask)?;
        candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v)
    }

    /// Causal over `offset` cached keys and t positions, with keys 3..6 of the second row
    /// masked (padding).
    fn mask(b: usize, t: usize, offset: usize) -> Tensor {
        let total = offset + t;
        let values: Vec<f32> = (0..b * t * total)
            .map(|n| {
                let (row, i, j) = (n / (t * total), n / total % t, n % total);
                let hidden = j > offset + i || (row == 1 && (3..6).contains(&j));
                if hidden {
                    super::super::decoder::MASKED as f32
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(values, (b, 1, t, total), &Device::Cpu).unwrap()
    }

    #[test]
    fn blocks_of_query_positions_match_the_whole_product_and_its_gradients() {
        let (b, kv, rep, t, d) = (2, 2, 3, 300, 16);
        for offset in [0, 7] {
            let total = offset + t;
            let var = |rows: usize, seed: f64| {
                let n = b * kv * rows * d;
                let x: Vec<f32> = (0..n).map(|i| (i as f64 * seed).sin() as f32).collect();
                Var::from_tensor(&Tensor::from_vec(x, (b, kv, rows, d), &Device::Cpu).unwrap())
                    .unwrap()
            };
            let (q, k, v) = (var(rep * t, 0.37), var(total, 0.71), var(total, 1.13));
            let mask = mask(b, t, offset);
            let weights = var(rep * t, 0.29).as_tensor().detach();
            let blocked = attend(&q, &k, &v, Some(&mask), true).unwrap();
            let whole = composed(&q, &k, &v, &mask).unwrap();
            let grads = |out: &Tensor| (out * &weights).unwrap().sum_all().unwrap().backward();
            let (gb, gw) = (grads(&blocked).unwrap(), grads(&whole).unwrap());
            let close = |a: &Tensor, e: &Tensor, what: &str| {
                let err = (a - e).unwrap().abs().unwrap().max_all().unwrap();
                let err = err.to_scalar::<f32>().unwrap();
                assert!(err < 1e-4, "{what} (offset {offset}): max error {err}");
            };
            close(&blocked, &whole, "output");
            for (x, name) in [(&q, "dq"), (&k, "dk"), (&v, "dv")] {
                close(
                    gb.get(x.as_tensor()).unwrap(),
                    gw.get(x.as_tensor()).unwrap(),
                    name,
                );
            }
        }
    }
}
