//! Attention of a few query rows over many keys, as a decode step has it: the 7 query heads
//! a kv head serves, one new position each, against every cached key. Through candle's gemm
//! each (row, kv head) was two small products (7 x 64 by 64 x T, then 7 x T by T x 64), and
//! packing and dispatch for them cost 3-4 times the time their reads need (an answer step at
//! 11 rows and 600+ keys spent ~25 ms of its ~87 there).
//!
//! Here each (batch row, kv head) is one task: its scores 16 keys at a time in registers, the
//! softmax of [`super::masked_softmax`], then the weighted sum of the values. Every sum runs in
//! a fixed order within the task, so a row's output does not depend on the batch it sits in,
//! and keys a mask hides (exact zero probabilities) change nothing.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Most query rows a kv head may bring: the kernel is for decode steps (a head's few query
/// heads), gemm does better with a prompt's many rows.
const MAX_ROWS: usize = 16;

/// softmax(q kᵀ + mask) v for f32 CPU tensors on a CPU with AVX-512, or None (nothing
/// computed) for anything else. q (b, kv_heads, rows, d) with rows <= 16 and d 64 or 128; k
/// and v (b, kv_heads, T, d) with each head's keys contiguous (views of a larger cache are
/// fine); mask (1 or b, 1, t, T), additive, row r of a head taking mask row r % t.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
    if !supported() {
        return Ok(None);
    }
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    let (b, heads, rows, d) = q.dims4()?;
    let total = k.dim(2)?;
    if ![q, k, v].into_iter().all(f32_cpu)
        || !mask.is_none_or(|m| f32_cpu(m) && m.is_contiguous())
        || rows > MAX_ROWS
        || !(d == 64 || d == 128)
        || total == 0
        || k.dims() != v.dims()
        || k.dims4()? != (b, heads, total, d)
    {
        return Ok(None);
    }
    let mask_rows = match mask {
        Some(m) => super::masked_softmax::mask_rows(m, b, rows, total)
            .map_err(|e| e.context("decode attention"))?,
        None => 1,
    };
    let q = q.contiguous()?;
    let (q_storage, q_layout) = q.storage_and_layout();
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let mask_storage = mask.map(|m| m.storage_and_layout());
    let (Some(qs), Some(ks), Some(vs)) = (
        super::f32s(&q_storage, q_layout),
        Heads::of(&k_storage, k_layout, d),
        Heads::of(&v_storage, v_layout, d),
    ) else {
        return Ok(None);
    };
    let masks = match &mask_storage {
        Some((s, l)) => match super::f32s(s, l) {
            Some(m) => Some(m),
            None => return Ok(None),
        },
        None => None,
    };
    let mut out = vec![0f32; b * heads * rows * d];
    out.par_chunks_mut(rows * d)
        .enumerate()
        .for_each(|(task, out)| {
            let (row, head) = (task / heads, task % heads);
            let mask = masks.map(|m| {
                let at = if m.len() == mask_rows * total { 0 } else { row };
                &m[at * mask_rows * total..(at + 1) * mask_rows * total]
            });
            // Tasks run in order within a thread's share, so the next is most often this
            // thread's own next job.
            let next = (task + 1 < b * heads).then(|| {
                let (row, head) = ((task + 1) / heads, (task + 1) % heads);
                (ks.head(row, head, total), vs.head(row, head, total))
            });
            let job = Job {
                q: &qs[task * rows * d..(task + 1) * rows * d],
                k: ks.head(row, head, total),
                v: vs.head(row, head, total),
                next,
                mask,
                mask_rows,
                rows,
                total,
            };
            run(&job, out, d);
        });
    Tensor::from_vec(out, (b, heads, rows, d), q.device()).map(Some)
}

/// One job with head size d (64 or 128), on a CPU where [`supported`] holds.
fn run(job: &Job, out: &mut [f32], d: usize) {
    // SAFETY: `attend` comes here only where `supported` found AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match d {
            64 => avx512::attend::<4>(job, out),
            _ => avx512::attend::<8>(job, out),
        }
    }
    // Elsewhere `supported` is false and nothing comes here.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (job, out, d);
}

fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Keys or values (b, kv_heads, T, d) whose heads each hold T contiguous rows of d, at any
/// batch and head strides (the filled part of a cache's buffers).
struct Heads<'a> {
    data: &'a [f32],
    start: usize,
    row_stride: usize,
    head_stride: usize,
    d: usize,
}

impl<'a> Heads<'a> {
    fn of(storage: &'a Storage, layout: &Layout, d: usize) -> Option<Self> {
        let Storage::Cpu(CpuStorage::F32(data)) = storage else {
            return None;
        };
        match *layout.stride() {
            [row_stride, head_stride, key_stride, 1] if key_stride == d => Some(Self {
                data,
                start: layout.start_offset(),
                row_stride,
                head_stride,
                d,
            }),
            _ => None,
        }
    }

    /// The `total` keys of batch row `row`, kv head `head`: (total, d) contiguous.
    fn head(&self, row: usize, head: usize, total: usize) -> &'a [f32] {
        let at = self.start + row * self.row_stride + head * self.head_stride;
        &self.data[at..at + total * self.d]
    }
}

/// One (batch row, kv head): its query rows (rows, d), keys and values (total, d), and its
/// mask rows (mask_rows, total) if any.
struct Job<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    /// The next job's keys and values, fetched into L2 while this one computes.
    next: Option<(&'a [f32], &'a [f32])>,
    mask: Option<&'a [f32]>,
    mask_rows: usize,
    rows: usize,
    total: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Job, MAX_ROWS};
    use crate::kernels::exp;

    /// `out` (rows, 16 * C) = softmax(q kᵀ + mask) v for one job; d = 16 * C.
    ///
    /// A step reads the whole cache once. Each block of 16 keys meets every query row while
    /// it is in L1, and while one job computes, the next job's keys and values (most often
    /// this thread's next) are fetched into L2 a block at a time, so the fetch overlaps the
    /// arithmetic instead of following it. Its arithmetic: ~4.8 µs a job of 7 rows x 160
    /// keys (d 64) from L2, down from ~6.5 before the softmax's row sums ran side by side.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn attend<const C: usize>(job: &Job, out: &mut [f32]) {
        let (rows, total, d) = (job.rows, job.total, 16 * C);
        let mut scores = vec![0f32; rows * total];
        for first in (0..total).step_by(16) {
            let len = (total - first).min(16);
            if let Some((k, _)) = job.next {
                prefetch_l2(&k[first * d..], len * d);
            }
            let keys = &job.k[first * d..];
            for r in 0..rows {
                let mut q = [_mm512_setzero_ps(); C];
                for (c, q) in q.iter_mut().enumerate() {
                    *q = _mm512_loadu_ps(job.q[r * d + 16 * c..].as_ptr());
                }
                let sums = lane_sums(block_dots(&q, keys, len));
                let mask = ((1u32 << len) - 1) as __mmask16;
                _mm512_mask_storeu_ps(scores[r * total + first..].as_mut_ptr(), mask, sums);
            }
        }
        softmax_rows(&mut scores, job);
        // Queries in groups whose sums fill 16 registers; the values are read once a group.
        let group = (16 / C).max(1);
        for first in (0..rows).step_by(group) {
            let (scores, out) = (&scores[first * total..], &mut out[first * d..]);
            match group.min(rows - first) {
                1 => weighted_values::<C, 1>(scores, job, out, first == 0),
                2 => weighted_values::<C, 2>(scores, job, out, first == 0),
                3 => weighted_values::<C, 3>(scores, job, out, first == 0),
                _ => weighted_values::<C, 4>(scores, job, out, first == 0),
            }
        }
    }

    /// `out` (N, d) = p v for N query rows' probabilities `p` (N, total, the first N rows of
    /// `scores`): each a sum over the keys in order. The first group fetches the next job's
    /// values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn weighted_values<const C: usize, const N: usize>(
        scores: &[f32],
        job: &Job,
        out: &mut [f32],
        prefetching: bool,
    ) {
        let (total, d) = (job.total, 16 * C);
        let mut acc = [[_mm512_setzero_ps(); C]; N];
        for j in 0..total {
            if let (true, Some((_, v))) = (prefetching, job.next) {
                prefetch_l2(&v[j * d..], d);
            }
            let vp = job.v[j * d..].as_ptr();
            let mut v = [_mm512_setzero_ps(); C];
            for (c, v) in v.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(vp.add(16 * c));
            }
            for (g, acc) in acc.iter_mut().enumerate() {
                let p = _mm512_set1_ps(scores[g * total + j]);
                for c in 0..C {
                    acc[c] = _mm512_fmadd_ps(p, v[c], acc[c]);
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            for (c, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out[g * d + 16 * c..].as_mut_ptr(), *a);
            }
        }
    }

    /// Lane-wise partial dot products of q with the block's first `len` (<= 16) keys, zero
    /// past them. A full block's loop has a constant count, so it unrolls and the 16 sums
    /// stay in registers for [`lane_sums`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block_dots<const C: usize>(
        q: &[__m512; C],
        keys: &[f32],
        len: usize,
    ) -> [__m512; 16] {
        let mut dots = [_mm512_setzero_ps(); 16];
        let d = 16 * C;
        if len == 16 {
            for (j, dot_j) in dots.iter_mut().enumerate() {
                *dot_j = dot::<C>(q, keys[j * d..].as_ptr());
            }
        } else {
            for (j, dot_j) in dots.iter_mut().enumerate().take(len) {
                *dot_j = dot::<C>(q, keys[j * d..].as_ptr());
            }
        }
        dots
    }

    /// Each query row's scores (rows, total) replaced by softmax(scores + mask), with the
    /// bits of [`crate::kernels::masked_softmax::softmax`] row by row; the rows' sequential
    /// sums (a chain of dependent adds each, most of that function's time) run side by side.
    #[target_feature(enable = "avx512f")]
    unsafe fn softmax_rows(scores: &mut [f32], job: &Job) {
        let (rows, total) = (job.rows, job.total);
        for (r, row) in scores.chunks_exact_mut(total).enumerate() {
            let mask = job.mask.map(|m| {
                let at = (r % job.mask_rows) * total;
                &m[at..at + total]
            });
            let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
            for_lanes(total, |at, lanes| {
                let mut x = _mm512_maskz_loadu_ps(lanes, row[at..].as_ptr());
                if let Some(m) = mask {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(lanes, m[at..].as_ptr()));
                    _mm512_mask_storeu_ps(row[at..].as_mut_ptr(), lanes, x);
                }
                max = _mm512_mask_max_ps(max, lanes, max, x);
            });
            exp::avx512::shifted_in_place(row, _mm512_reduce_max_ps(max));
        }
        let mut sums = [0f32; MAX_ROWS];
        for j in 0..total {
            for (r, sum) in sums.iter_mut().enumerate().take(rows) {
                *sum += scores[r * total + j];
            }
        }
        for (row, sum) in scores.chunks_exact_mut(total).zip(sums) {
            let sum = _mm512_set1_ps(sum);
            for_lanes(total, |at, lanes| {
                let x = _mm512_maskz_loadu_ps(lanes, row[at..].as_ptr());
                _mm512_mask_storeu_ps(row[at..].as_mut_ptr(), lanes, _mm512_div_ps(x, sum));
            });
        }
    }

    /// `f(at, lanes)` for each run of 16 elements of a row of `len`, the last one masked.
    #[inline(always)]
    fn for_lanes(len: usize, mut f: impl FnMut(usize, __mmask16)) {
        for at in (0..len).step_by(16) {
            let n = (len - at).min(16);
            f(at, ((1u32 << n) - 1) as __mmask16);
        }
    }

    /// Prefetches the cache lines of the first `len` values of `from` into L2.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn prefetch_l2(from: &[f32], len: usize) {
        for line in (0..len.min(from.len())).step_by(16) {
            _mm_prefetch::<_MM_HINT_T1>(from.as_ptr().add(line) as *const i8);
        }
    }

    /// Lane-wise partial sums of q · k over d = 16 * C (chunk 0 first).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot<const C: usize>(q: &[__m512; C], k: *const f32) -> __m512 {
        let mut acc = _mm512_mul_ps(q[0], _mm512_loadu_ps(k));
        for (c, q) in q.iter().enumerate().skip(1) {
            acc = _mm512_fmadd_ps(*q, _mm512_loadu_ps(k.add(16 * c)), acc);
        }
        acc
    }

    /// Lane j of the result is the sum of the 16 lanes of `x[j]`, by a fixed tree: halves of
    /// each pair of vectors added, then quarters, then pairs of lanes, then lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lane_sums(x: [__m512; 16]) -> __m512 {
        // 128-bit quarters (a0 a1 a2 a3), (b0 b1 b2 b3) -> (a0+a2, a1+a3, b0+b2, b1+b3).
        let mut halves = [_mm512_setzero_ps(); 8];
        for (i, h) in halves.iter_mut().enumerate() {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            *h = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            );
        }
        // Each quarter now holds 4 partial sums of one key, keys 4i..4i+4 in order.
        let mut quarters = [_mm512_setzero_ps(); 4];
        for (i, q) in quarters.iter_mut().enumerate() {
            let (a, b) = (halves[2 * i], halves[2 * i + 1]);
            *q = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            );
        }
        // Within each quarter L: two partials of key 8i+L, then two of key 8i+4+L.
        let mut pairs = [_mm512_setzero_ps(); 2];
        for (i, p) in pairs.iter_mut().enumerate() {
            let (a, b) = (quarters[2 * i], quarters[2 * i + 1]);
            *p = _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
            );
        }
        // Quarter L: keys L, 4+L, 8+L, 12+L; lane j takes key j from lane 4 (j % 4) + j / 4.
        let (a, b) = (pairs[0], pairs[1]);
        let sums = _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(a, b),
            _mm512_shuffle_ps::<0b11_01_11_01>(a, b),
        );
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(order, sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tensor_bits;
    use candle_core::{DType, Device, D};

    /// softmax(q kᵀ + mask) v by candle's ops.
    fn composed(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let scores = q.matmul(&k.t().unwrap()).unwrap();
        let scores = match mask {
            Some(m) => crate::kernels::masked_softmax::masked(&scores, m).unwrap(),
            None => scores,
        };
        candle_nn::ops::softmax(&scores, D::Minus1)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    /// Keys or values as a cache holds them: the first `total` of `capacity` positions.
    fn cached(b: usize, heads: usize, total: usize, d: usize, seed: u64) -> Tensor {
        let capacity = total + 5;
        let n = b * heads * capacity * d;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i as u64 * 2_654_435_761 + seed) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        Tensor::from_vec(x, (b, heads, capacity, d), &Device::Cpu)
            .unwrap()
            .narrow(2, 0, total)
            .unwrap()
    }

    /// (mb, 1, t, total): batch row 1 (when there is one) has its first `hidden` keys masked.
    fn mask(mb: usize, t: usize, total: usize, hidden: usize) -> Tensor {
        let m: Vec<f32> = (0..mb * t * total)
            .map(|i| match i / (t * total) == 1 && i % total < hidden {
                true => -1e9, // what the decoder's masks add
                false => 0.0,
            })
            .collect();
        Tensor::from_vec(m, (mb, 1, t, total), &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_the_composed_ops_and_ignores_the_keys_a_mask_hides() {
        if !supported() {
            return;
        }
        let (b, heads) = (3, 2);
        for (rows, d, total) in [
            (7, 64, 1),
            (7, 64, 33),
            (7, 64, 300),
            (1, 128, 16),
            (16, 128, 47),
        ] {
            let q = Tensor::randn(0f32, 0.5, (b, heads, rows, d), &Device::Cpu).unwrap();
            let (k, v) = (cached(b, heads, total, d, 1), cached(b, heads, total, d, 7));
            let hidden = (total / 3).min(total - 1);
            for m in [
                None,
                Some(mask(b, 1, total, hidden)),
                Some(mask(1, rows, total, 0)),
            ] {
                let got = attend(&q, &k, &v, m.as_ref()).unwrap().expect("supported");
                let want = composed(&q, &k, &v, m.as_ref());
                let diff = crate::kernels::max_abs_diff(&got, &want);
                assert!(diff < 1e-5, "rows {rows}, d {d}, {total} keys: {diff}");
            }
            // Batch row 1 alone, without the keys its mask hid: the same bits.
            let batch = attend(&q, &k, &v, Some(&mask(b, 1, total, hidden)))
                .unwrap()
                .unwrap();
            let own = |x: &Tensor| {
                x.narrow(0, 1, 1)
                    .unwrap()
                    .narrow(2, hidden, total - hidden)
                    .unwrap()
            };
            let alone = attend(&q.narrow(0, 1, 1).unwrap(), &own(&k), &own(&v), None)
                .unwrap()
                .unwrap();
            assert_eq!(
                tensor_bits(&batch.narrow(0, 1, 1).unwrap()),
                tensor_bits(&alone),
                "rows {rows}, {total} keys"
            );
        }
    }

    #[test]
    fn leaves_other_shapes_and_dtypes_to_the_composed_ops() {
        let q = Tensor::zeros((1, 2, 7, 64), DType::F32, &Device::Cpu).unwrap();
        let k = cached(1, 2, 9, 64, 3);
        assert!(attend(&q.to_dtype(DType::BF16).unwrap(), &k, &k, None)
            .unwrap()
            .is_none());
        let many = Tensor::zeros((1, 2, 17, 64), DType::F32, &Device::Cpu).unwrap();
        assert!(
            attend(&many, &k, &k, None).unwrap().is_none(),
            "17 query rows"
        );
        let narrow = Tensor::zeros((1, 2, 7, 32), DType::F32, &Device::Cpu).unwrap();
        let k32 = cached(1, 2, 9, 32, 3);
        assert!(
            attend(&narrow, &k32, &k32, None).unwrap().is_none(),
            "d = 32"
        );
        if supported() {
            let wrong = mask(1, 2, 9, 0);
            let wrong = wrong
                .narrow(2, 0, 1)
                .unwrap()
                .narrow(3, 0, 8)
                .unwrap()
                .contiguous()
                .unwrap();
            assert!(
                attend(&q, &k, &k, Some(&wrong)).is_err(),
                "a mask of 8 keys for 9"
            );
        }
    }
}
