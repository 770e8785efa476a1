//! The KV cache of a generation: every layer's keys and values for the positions seen so far.
//!
//! Without a gradient a layer's keys and values live in buffers with room to spare, and each
//! decode step writes its new position in place: appending by concatenation copied the whole
//! cache every step (a 24-row batch of 1,000-token sequences moves ~0.6 GB a step on the
//! 0.5B model, and most of it into freshly faulted pages). Attention reads views of the
//! filled part. With a gradient (a graph to keep) layers still grow by concatenation.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::decoder::DecodeWeights;

/// Keys and values of every layer: (b, kv_heads, positions, head_dim) each, and optionally the
/// bf16 weights the decode steps through it multiply.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<Layer>>,
    pub(super) len: usize,
    pub(super) weights: Option<Arc<DecodeWeights>>,
    /// Positions to make room for when a layer's buffers are first taken.
    reserve: usize,
}

/// One layer's buffers, (b, kv_heads, capacity, head_dim); the first `len` positions are filled.
#[derive(Clone)]
struct Layer {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// An empty cache whose decode steps multiply `weights` in place of the model's f32
    /// matrices.
    pub fn with_weights(weights: Option<Arc<DecodeWeights>>) -> Self {
        Self {
            weights,
            ..Self::default()
        }
    }

    /// Room for `positions` in all, prompt included, so that decoding up to there never
    /// reallocates (past it, the buffers double).
    pub fn reserving(mut self, positions: usize) -> Self {
        self.reserve = positions;
        self
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the batch rows at `rows` (a u32 index tensor), in that order: finished
    /// sequences leave the batch, so later steps compute only the live ones.
    pub fn keep_rows(&mut self, rows: &Tensor) -> Result<()> {
        for layer in self.layers.iter_mut().flatten() {
            layer.k = layer.k.index_select(rows, 0)?;
            layer.v = layer.v.index_select(rows, 0)?;
        }
        Ok(())
    }

    /// Appends layer `i`'s new keys and values, (b, kv_heads, t, head_dim), and returns all
    /// of that layer's so far. `grad`: the result joins a graph, so it is built by
    /// concatenation (and stored detached when no graph is kept).
    pub(super) fn append(
        &mut self,
        i: usize,
        k: Tensor,
        v: Tensor,
        grad: bool,
    ) -> Result<(Tensor, Tensor)> {
        if self.layers.len() <= i {
            self.layers.resize(i + 1, None);
        }
        let reserve = self.reserve;
        let slot = &mut self.layers[i];
        let t = k.dim(2)?;
        if grad {
            let (k, v) = match slot.take() {
                Some(l) => (
                    Tensor::cat(&[&l.k.narrow(2, 0, l.len)?, &k], 2)?,
                    Tensor::cat(&[&l.v.narrow(2, 0, l.len)?, &v], 2)?,
                ),
                None => (k, v),
            };
            let len = k.dim(2)?;
            *slot = Some(Layer {
                k: k.clone(),
                v: v.clone(),
                len,
            });
            return Ok((k, v));
        }
        let len = slot.as_ref().map_or(0, |l| l.len);
        let need = len + t;
        let capacity = slot.as_ref().map_or(0, |l| l.k.dim(2).unwrap_or(0));
        if need > capacity {
            let grown = need.max(reserve).max(2 * capacity);
            let buffer = |new: &Tensor, old: Option<&Tensor>| -> Result<Tensor> {
                let (b, h, _, d) = new.dims4()?;
                let buf = Tensor::zeros((b, h, grown, d), new.dtype(), new.device())?;
                if let Some(old) = old.filter(|_| len > 0) {
                    buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            let old = slot.take();
            *slot = Some(Layer {
                k: buffer(&k, old.as_ref().map(|l| &l.k))?,
                v: buffer(&v, old.as_ref().map(|l| &l.v))?,
                len,
            });
        }
        let layer = slot.as_mut().expect("allocated above");
        layer.k.slice_set(&k.detach().contiguous()?, 2, len)?;
        layer.v.slice_set(&v.detach().contiguous()?, 2, len)?;
        layer.len = need;
        Ok((layer.k.narrow(2, 0, need)?, layer.v.narrow(2, 0, need)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn kv(b: usize, t: usize, seed: f64) -> Tensor {
        (Tensor::arange(0f32, (b * 2 * t * 4) as f32, &Device::Cpu)
            .unwrap()
            .reshape((b, 2, t, 4))
            .unwrap()
            + seed)
            .unwrap()
    }

    #[test]
    fn in_place_appends_match_concatenation_across_growth_and_row_drops() {
        let (mut in_place, mut joined) = (KvCache::default().reserving(5), KvCache::default());
        // A 3-position prompt, then single positions: the buffers grow past the reserve, and
        // two of the three rows stay after step 2.
        let mut rows = 3;
        for s in 0..7 {
            let new = match s {
                0 => kv(3, 3, 0.0),
                _ => kv(rows, 1, 100.0 * s as f64),
            };
            let (a, _) = in_place.append(0, new.clone(), new.clone(), false).unwrap();
            let (b, _) = joined.append(0, new.clone(), new, true).unwrap();
            let diff = (a - &b).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "step {s}");
            if s == 2 {
                let keep = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
                in_place.keep_rows(&keep).unwrap();
                joined.keep_rows(&keep).unwrap();
                rows = 2;
            }
        }
        let layer = in_place.layers[0].as_ref().unwrap();
        assert_eq!((layer.len, layer.k.dim(2).unwrap()), (9, 10));
        assert_eq!(layer.k.dtype(), DType::F32);
    }
}
