//! The KV cache of a generation: every layer's keys and values for the positions seen so far.
//!
//! Without a gradient a layer's keys and values live in buffers with room to spare, and each
//! decode step writes its new position in place: appending by concatenation copied the whole
//! cache every step (a 24-row batch of 1,000-token sequences moves ~0.6 GB a step on the
//! 0.5B model, and most of it into freshly faulted pages). Attention reads views of the
//! filled part. With a gradient (a graph to keep) layers still grow by concatenation.
//!
//! Rows need not begin at column 0: a row's `start` is its first real column (left padding
//! before it, or a finished row's leftovers when a new prompt took its place), its keys before
//! it are masked, and its RoPE positions count from it. So a prompt prefilled on its own can
//! be spliced into a running batch ([`KvCache::splice`]) and decode with the others.

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
    /// Each row's first real column; empty when every row starts at 0.
    starts: Vec<usize>,
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

    /// An empty cache multiplying the same decode weights, for a prompt pass to splice in: a
    /// prompt gets the same bits whether it starts a batch or joins one.
    pub fn empty_like(&self) -> Self {
        Self::with_weights(self.weights.clone())
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

    /// Rows whose first real columns are `starts` (left padding before them), for the prompt
    /// pass that fills an empty cache.
    pub fn starting_at(mut self, starts: Vec<usize>) -> Self {
        self.starts = starts;
        self
    }

    /// Each row's first real column, or None when every row starts at column 0.
    pub fn starts(&self) -> Option<&[usize]> {
        Some(self.starts.as_slice()).filter(|s| s.iter().any(|&c| c > 0))
    }

    /// Keeps only the batch rows at `rows`, in that order: finished sequences leave the batch,
    /// so later steps compute only the live ones.
    pub fn keep_rows(&mut self, rows: &[usize]) -> Result<()> {
        if !self.starts.is_empty() {
            self.starts = rows.iter().map(|&r| self.starts[r]).collect();
        }
        let Some(first) = self.layers.iter().flatten().next() else {
            return Ok(());
        };
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let index = Tensor::new(index.as_slice(), first.k.device())?;
        for layer in self.layers.iter_mut().flatten() {
            layer.k = layer.k.index_select(&index, 0)?;
            layer.v = layer.v.index_select(&index, 0)?;
        }
        Ok(())
    }

    /// Replaces row `row` with row `from_row` of `from` (a prompt pass of its own), its last
    /// column aligned with this cache's last: the row then decodes in step with the others.
    /// Needs `self.len() >= from.len()` ([`KvCache::make_room`]).
    pub fn splice(&mut self, row: usize, from: &KvCache, from_row: usize) -> Result<()> {
        let at = self.len.checked_sub(from.len).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "splice: {} cached positions cannot take a {}-position row",
                self.len, from.len
            ))
        })?;
        for (mine, theirs) in self.layers.iter().zip(&from.layers) {
            let (Some(mine), Some(theirs)) = (mine, theirs) else {
                candle_core::bail!("splice: a layer is missing from one of the caches");
            };
            for (dst, src) in [(&mine.k, &theirs.k), (&mine.v, &theirs.v)] {
                let src = src.narrow(0, from_row, 1)?.narrow(2, 0, from.len)?;
                // A row of a contiguous buffer is contiguous: this writes into the buffer.
                dst.narrow(0, row, 1)?
                    .slice_set(&src.contiguous()?, 2, at)?;
            }
        }
        let rows = self.rows();
        self.starts.resize(rows, 0);
        self.starts[row] = at + from.starts.get(from_row).copied().unwrap_or(0);
        Ok(())
    }

    /// Makes sure at least `positions` columns are cached, adding masked columns in front.
    pub fn make_room(&mut self, positions: usize) -> Result<()> {
        match positions.checked_sub(self.len) {
            Some(more) if more > 0 => self.reframe(0, more),
            _ => Ok(()),
        }
    }

    /// Drops the columns in front of every row's start once they are at least half the cache:
    /// rows replaced one after another would otherwise leave attention an ever longer prefix
    /// of masked keys.
    pub fn compact(&mut self) -> Result<()> {
        let Some(dead) = self.starts().and_then(|s| s.iter().min().copied()) else {
            return Ok(());
        };
        match 2 * dead >= self.len {
            true => self.reframe(dead, 0),
            false => Ok(()),
        }
    }

    fn rows(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .next()
            .map_or(self.starts.len(), |l| l.k.dim(0).unwrap_or(0))
    }

    /// Moves every layer's columns `drop..len` to start at column `front` of new buffers (the
    /// room after them kept), and the row starts with them.
    fn reframe(&mut self, drop: usize, front: usize) -> Result<()> {
        let kept = self.len - drop;
        for layer in self.layers.iter_mut().flatten() {
            let capacity = layer.k.dim(2)? - drop + front;
            let moved = |old: &Tensor| -> Result<Tensor> {
                let (b, h, _, d) = old.dims4()?;
                let buf = Tensor::zeros((b, h, capacity, d), old.dtype(), old.device())?;
                buf.slice_set(&old.narrow(2, drop, kept)?.contiguous()?, 2, front)?;
                Ok(buf)
            };
            layer.k = moved(&layer.k)?;
            layer.v = moved(&layer.v)?;
            layer.len = front + kept;
        }
        let rows = self.rows();
        self.starts.resize(rows, 0);
        for s in &mut self.starts {
            *s = *s + front - drop;
        }
        self.len = front + kept;
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
                in_place.keep_rows(&[2, 0]).unwrap();
                joined.keep_rows(&[2, 0]).unwrap();
                rows = 2;
            }
        }
        let layer = in_place.layers[0].as_ref().unwrap();
        assert_eq!((layer.len, layer.k.dim(2).unwrap()), (9, 10));
        assert_eq!(layer.k.dtype(), DType::F32);
    }

    /// The filled columns of row `r`, layer 0's keys.
    fn row(cache: &KvCache, r: usize) -> Vec<Vec<f32>> {
        let k = &cache.layers[0].as_ref().unwrap().k;
        let row = k.narrow(0, r, 1).unwrap().narrow(2, 0, cache.len).unwrap();
        row.squeeze(0)
            .unwrap()
            .narrow(0, 0, 1)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn splice_room_in_front_and_compaction_move_rows_with_their_starts() {
        let mut batch = KvCache::default().starting_at(vec![0, 1]);
        batch
            .append(0, kv(2, 3, 0.0), kv(2, 3, 0.0), false)
            .unwrap();
        batch.len = 3;
        // A 4-position prompt pass (its first column padding) into row 0: room in front first.
        let mut alone = KvCache::default().starting_at(vec![1]);
        alone
            .append(0, kv(1, 4, 500.0), kv(1, 4, 500.0), false)
            .unwrap();
        alone.len = 4;
        let (before, spliced) = (row(&batch, 1), row(&alone, 0));
        assert!(
            batch.splice(0, &alone, 0).is_err(),
            "3 columns cannot take 4"
        );
        batch.make_room(4).unwrap();
        batch.splice(0, &alone, 0).unwrap();
        assert_eq!(batch.starts(), Some(&[1, 2][..]));
        assert_eq!(row(&batch, 0), spliced);
        assert_eq!(row(&batch, 1)[1..], before[..]);
        // Nothing is dropped while the front columns are less than half the cache.
        batch.compact().unwrap();
        assert_eq!(batch.len(), 4);
        batch.starts = vec![2, 3];
        batch.compact().unwrap();
        assert_eq!((batch.len(), batch.starts()), (2, Some(&[0, 1][..])));
        assert_eq!(row(&batch, 0), spliced[2..]);
    }
}
