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

use candle_core::{CpuStorage, DType, Device, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::{swiglu, Plus};

/// Most rows of `x` the kernel takes at once: more are taken only for bf16 weights where bf16
/// pairs are multiplied (prompt passes), in pieces of this many; other large products
/// (f32 prefill, training) go to gemm.
pub const MAX_ROWS: usize = 64;

/// Whether [`matmul_nt`] can compute `x · wᵀ` for these operands on this machine: up to
/// [`MAX_ROWS`] rows, or any number when bf16 `w` meets `x` in bf16 pair products.
pub fn usable(x: &Tensor, w: &Tensor) -> bool {
    let rows = x.dims().iter().rev().skip(1).product::<usize>();
    matches!(x.device(), Device::Cpu)
        && x.dtype() == DType::F32
        && matches!(w.dtype(), DType::F32 | DType::BF16)
        && w.rank() == 2
        && cpu_supported()
        && takes_rows(rows, w.dtype())
}

/// Whether the kernel takes `m` rows of x against a weight of `dtype`.
fn takes_rows(m: usize, dtype: DType) -> bool {
    (1..=MAX_ROWS).contains(&m) || (dtype == DType::BF16 && m > 0 && prefill_in_bf16())
}

/// Whether a bf16 product of these sizes runs on the AMX tiles here.
fn on_tiles_here(m: usize, n: usize, k: usize) -> bool {
    super::amx::supported() && super::amx::fits(m, n, k)
}

/// Whether prompt passes (any number of rows) can multiply the bf16 decode copies here with
/// the same per-row bits as decode steps: where bf16 pairs are multiplied (AVX-512 BF16, and
/// AMX), whose kernels sum each output the same way however many rows come with it.
pub fn prefill_in_bf16() -> bool {
    bf16_dot_supported()
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

/// Whether bf16 copies of f32 weights speed up this kernel here: any AVX-512 CPU streams half
/// the bytes from them.
pub fn bf16_weights_pay() -> bool {
    cpu_supported()
}

/// Matrices of one width rounded to bf16 (nearest even), in parallel with AVX-512 BF16 where
/// the CPU has it, their rows stacked: (sum of rows, k). Each matrix is cut into `blocks`
/// runs of rows and the matrices take turns, a run each: with one block, all of one matrix's
/// rows and then the next's; with gate and up cut into blocks of [`swiglu::BLOCK`] rows, the
/// layout [`gated_nt`] takes.
pub fn stacked_bf16(ws: &[&Tensor], blocks: usize) -> Result<Tensor> {
    let dims = ws.iter().map(|w| w.dims2()).collect::<Result<Vec<_>>>()?;
    let rows: usize = dims.iter().map(|d| d.0).sum();
    let k = dims.first().map_or(0, |d| d.1);
    if dims.iter().any(|d| d.1 != k) {
        candle_core::bail!("stacked_bf16: matrices of different widths");
    }
    if blocks == 0 || dims.iter().any(|d| !d.0.is_multiple_of(blocks)) {
        candle_core::bail!("stacked_bf16: {dims:?} do not cut into {blocks} blocks of rows");
    }
    #[cfg(target_arch = "x86_64")]
    if bf16_dot_supported() {
        let storages: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
        let sources: Option<Vec<&[f32]>> =
            storages.iter().map(|(s, l)| super::f32s(s, l)).collect();
        if let Some(sources) = sources {
            let mut out = vec![half::bf16::ZERO; rows * k];
            // Each block of each matrix and where it goes, in the order they are stacked.
            let mut runs = Vec::with_capacity(blocks * sources.len());
            let mut rest = &mut out[..];
            for b in 0..blocks {
                for source in &sources {
                    let len = source.len() / blocks;
                    let (dst, tail) = rest.split_at_mut(len);
                    runs.push((&source[b * len..(b + 1) * len], dst));
                    rest = tail;
                }
            }
            runs.into_par_iter().for_each(|(source, dst)| {
                dst.par_chunks_mut(1 << 16)
                    .zip(source.par_chunks(1 << 16))
                    // SAFETY: AVX-512 BF16 was detected.
                    .for_each(|(o, v)| unsafe { avx512::round_bf16(v, o) })
            });
            return Tensor::from_vec(out, (rows, k), ws[0].device());
        }
    }
    let copies = ws
        .iter()
        .map(|w| w.to_dtype(DType::BF16)?.reshape((blocks, (), k)))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&copies, 1)?.reshape((rows, k))
}

/// `out = x` rounded to bf16 (nearest even), with AVX-512 BF16 where the CPU has it.
pub(crate) fn round_bf16(x: &[f32], out: &mut [half::bf16]) {
    #[cfg(target_arch = "x86_64")]
    if bf16_dot_supported() {
        // SAFETY: AVX-512 BF16 was detected.
        return unsafe { avx512::round_bf16(x, out) };
    }
    for (o, v) in out.iter_mut().zip(x) {
        *o = half::bf16::from_f32(*v);
    }
}

/// `x (m, k) · w (n, k)ᵀ + bias (n) + residual (m, n) -> (m, n)` in f32, with no gradient,
/// the adds in that order (on AMX made to the sums on their way out, elsewhere after the
/// product: the bits of separate adds either way). Callers check [`usable`].
pub fn matmul_nt(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let op = MatVec {
        gated: false,
        bias: bias.map(|b| b.contiguous()).transpose()?,
        residual: residual.map(|r| r.contiguous()).transpose()?,
    };
    x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)
}

/// `silu(gate) ⊙ up` of [`matmul_nt`] with `w` (n, k) whose rows alternate blocks of the
/// gate's and up's ([`stacked_bf16`] by blocks of [`swiglu::BLOCK`] rows): (m, n / 2), the
/// bits of [`swiglu::gate_blocks`] of the product. Callers check [`usable`].
pub fn gated_nt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let op = MatVec {
        gated: true,
        bias: None,
        residual: None,
    };
    x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)
}

struct MatVec {
    /// The product's rows are gate and up blocks; the op returns their gate.
    gated: bool,
    /// Added to the product ([`Plus`]): (n) and (m, n), f32 on the CPU.
    bias: Option<Tensor>,
    residual: Option<Tensor>,
}

/// The `len` f32 elements of a contiguous CPU tensor's storage.
fn f32_elements<'a>(storage: &'a Storage, layout: &Layout, len: usize) -> Result<&'a [f32]> {
    match super::f32s(storage, layout) {
        Some(v) if v.len() == len => Ok(v),
        _ => candle_core::bail!("azr-matvec: a bias or residual must be {len} f32 on the CPU"),
    }
}

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
        let dtype = match ws {
            CpuStorage::BF16(_) => DType::BF16,
            _ => DType::F32,
        };
        let blocks_whole = !self.gated || n.is_multiple_of(2 * swiglu::BLOCK);
        if wk != k || !takes_rows(m, dtype) || !cpu_supported() || !blocks_whole {
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
        let gated = self.gated;
        let bias = self.bias.as_ref().map(|t| t.storage_and_layout());
        let residual = self.residual.as_ref().map(|t| t.storage_and_layout());
        let plus = Plus {
            bias: bias
                .as_ref()
                .map(|(s, l)| f32_elements(s, l, n))
                .transpose()?,
            residual: (residual.as_ref())
                .map(|(s, l)| f32_elements(s, l, m * n))
                .transpose()?,
        };
        if gated && (plus.bias.is_some() || plus.residual.is_some()) {
            candle_core::bail!("azr-matvec: a gated product adds nothing");
        }
        #[cfg(target_arch = "x86_64")]
        let out = match ws {
            CpuStorage::F32(w) => {
                let mut y = product::<avx512::Widen<f32>>(x, m, &w[wa..wb], n, k);
                plus.add_to(&mut y, n);
                gate(y, n, gated)
            }
            CpuStorage::BF16(w) => product_bf16(x, m, &w[wa..wb], n, k, gated, plus),
            _ => candle_core::bail!("azr-matvec: w must be f32 or bf16"),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let out: Vec<f32> = candle_core::bail!("azr-matvec runs on x86_64 only");
        let n = if gated { n / 2 } else { n };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// Whether this CPU has AVX-512 BF16, whose `vdpbf16ps` multiplies bf16 pairs: bf16 weights
/// then meet `x` rounded to bf16 (as PyTorch's bf16 does), at twice the products per
/// instruction of widening the weights to f32.
pub(crate) fn bf16_dot_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        cpu_supported() && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The product's rows `y` (m, n), or with `gated` their gate ([`gated_nt`]).
fn gate(y: Vec<f32>, n: usize, gated: bool) -> Vec<f32> {
    match gated {
        true => swiglu::gate_blocks(&y, n),
        false => y,
    }
}

/// [`product`] with bf16 weights, gated or not, `plus` added (on AMX, both inside the
/// product).
#[cfg(target_arch = "x86_64")]
fn product_bf16(
    x: &[f32],
    m: usize,
    w: &[half::bf16],
    n: usize,
    k: usize,
    gated: bool,
    plus: Plus,
) -> Vec<f32> {
    let mut y = match bf16_dot_supported() {
        true => {
            // The choice of kernel depends on the weight's shape, not on m: a row's bits stay
            // the same in any batch.
            if on_tiles_here(m, n, k) {
                return match gated {
                    true => super::amx::gated_product(x, m, w, n, k),
                    false => super::amx::product(x, m, w, n, k, plus),
                };
            }
            let mut xb = vec![half::bf16::ZERO; x.len()];
            // SAFETY: AVX-512 BF16 was detected.
            unsafe { avx512::round_bf16(x, &mut xb) };
            product::<avx512::Dot>(&xb, m, w, n, k)
        }
        false => product::<avx512::Widen<half::bf16>>(x, m, w, n, k),
    };
    plus.add_to(&mut y, n);
    gate(y, n, gated)
}

/// `y (m, n) = x (m, k) · w (n, k)ᵀ` with kernel `K` over row blocks of `w` in parallel, each
/// task writing its own columns of y. (Computed transposed, so that a task's part was one
/// contiguous run, and turned after, the turn and its buffer cost 15% of a batch-64 decode
/// step, and at the LM head's 151,936 columns as much as the product: 79 ms at 32 rows,
/// 41 ms written directly.) A prompt pass's rows go [`MAX_ROWS`] at a time, as a decode
/// step's, so x's piece stays in L2 while the weights stream past it.
#[cfg(target_arch = "x86_64")]
fn product<K: avx512::Kernel>(x: &[K::X], m: usize, w: &[K::W], n: usize, k: usize) -> Vec<f32> {
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    for (piece, x) in x.chunks(MAX_ROWS * k).enumerate() {
        // SAFETY: this piece's rows of y lie within the capacity.
        let out = super::Out(unsafe { y.as_mut_ptr().add(piece * MAX_ROWS * n) });
        // Ranges of w's rows in multiples of the 4-row tile.
        super::for_each_range(n, 16, |rows| {
            let cols = super::Columns {
                y: out.get(),
                n,
                first: rows.start,
                plus: Plus::default(),
            };
            let w = &w[rows.start * k..rows.end * k];
            // SAFETY: the caller (cpu_fwd) checked the CPU features `K` needs; `w` holds
            // whole rows of length k, whose columns of the piece's rows of y (from `first`)
            // only this range writes.
            unsafe { avx512::block::<K>(x, x.len() / k, w, cols, k) }
        });
    }
    // SAFETY: the pieces cover all m rows, and each piece's tasks all n columns.
    unsafe { y.set_len(m * n) };
    y
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::Columns;
    use std::arch::x86_64::*;
    use std::marker::PhantomData;

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

    /// How a kernel meets `x` and `w`: `STEP` k-elements of each per load, their products
    /// added into 16 f32 sums, and [`tile`] compiled with the CPU features it needs.
    pub trait Kernel {
        type X: Sync;
        type W: Sync;
        type XV: Copy;
        type WV: Copy;
        const STEP: usize;
        unsafe fn load_x(p: *const Self::X) -> Self::XV;
        unsafe fn load_w(p: *const Self::W) -> Self::WV;
        /// The first `n < STEP` elements, zeros after (a weight past the row could be an
        /// infinity or a NaN, so both operands are masked).
        unsafe fn load_x_tail(p: *const Self::X, n: usize) -> Self::XV;
        unsafe fn load_w_tail(p: *const Self::W, n: usize) -> Self::WV;
        unsafe fn madd(acc: __m512, x: Self::XV, w: Self::WV) -> __m512;
        /// R x-rows from `i` against C w-rows from `j`: [`tile`] with this kernel's features.
        unsafe fn tile<const R: usize, const C: usize>(
            x: &[Self::X],
            i: usize,
            w: &[Self::W],
            j: usize,
            y: Columns,
            k: usize,
        );
    }

    /// f32 x against f32 or bf16 weights widened to f32: 16 lanes of f32 FMA.
    pub struct Widen<W>(PhantomData<W>);

    /// bf16 x against bf16 weights: `vdpbf16ps` adds 16 lanes of pair products (32 bf16
    /// products) into f32 sums.
    pub struct Dot;

    /// y (m, first..first + rows) = x (m, k) · w (rows, k)ᵀ, in tiles of up to 4 x-rows by 4
    /// w-rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn block<K: Kernel>(x: &[K::X], m: usize, w: &[K::W], y: Columns, k: usize) {
        let rows = w.len() / k;
        let mut j = 0;
        while j < rows {
            let c = (rows - j).min(4);
            let mut i = 0;
            while i < m {
                let r = (m - i).min(4);
                macro_rules! tiles {
                    ($r:literal) => {
                        match c {
                            4 => K::tile::<$r, 4>(x, i, w, j, y, k),
                            3 => K::tile::<$r, 3>(x, i, w, j, y, k),
                            2 => K::tile::<$r, 2>(x, i, w, j, y, k),
                            _ => K::tile::<$r, 1>(x, i, w, j, y, k),
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

    /// R x-rows from `i` against C w-rows from `j`: R * C accumulators over k, each one
    /// sequential k-order sum and one fixed horizontal reduction, so a row's bits do not
    /// depend on its batch. Inlined into each kernel's `tile`, which enables its features.
    #[inline(always)]
    unsafe fn tile<K: Kernel, const R: usize, const C: usize>(
        x: &[K::X],
        i: usize,
        w: &[K::W],
        j: usize,
        y: Columns,
        k: usize,
    ) {
        let xp = x.as_ptr().add(i * k);
        let wp = w.as_ptr().add(j * k);
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let full = k / K::STEP * K::STEP;
        let mut p = 0;
        while p < full {
            // The w rows two tiles ahead, into L2, in every pass over x's rows. L2 tracks
            // more misses in flight than L1, whose few buffers the demand loads need; and
            // with more than 4 x rows a prefetch in the first pass only left memory idle in
            // the later ones. Decode step at batch 1 / 8 / 32: 52 / 77 / 168 ms with one
            // tile ahead into L1 in the first pass, 42 / 48 / 143 ms so (BENCHMARKS.md).
            // Past the last row a prefetch of nothing, which never faults.
            for c in 0..C {
                _mm_prefetch::<_MM_HINT_T1>(wp.wrapping_add((2 * C + c) * k + p).cast());
            }
            let wv: [K::WV; C] = std::array::from_fn(|c| K::load_w(wp.add(c * k + p)));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = K::load_x(xp.add(r * k + p));
                for (a, v) in a.iter_mut().zip(&wv) {
                    *a = K::madd(*a, xv, *v);
                }
            }
            p += K::STEP;
        }
        if full < k {
            let n = k - full;
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = K::load_x_tail(xp.add(r * k + p), n);
                for (c, a) in a.iter_mut().enumerate() {
                    *a = K::madd(*a, xv, K::load_w_tail(wp.add(c * k + p), n));
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (c, a) in a.iter().enumerate() {
                *y.at(i + r, j + c) = _mm512_reduce_add_ps(*a);
            }
        }
    }

    impl<W: Load> Kernel for Widen<W> {
        type X = f32;
        type W = W;
        type XV = __m512;
        type WV = __m512;
        const STEP: usize = 16;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn load_x(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn load_w(p: *const W) -> __m512 {
            W::load(p)
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn load_x_tail(p: *const f32, n: usize) -> __m512 {
            _mm512_maskz_loadu_ps(mask16(n), p)
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn load_w_tail(p: *const W, n: usize) -> __m512 {
            W::load_tail(p, mask16(n))
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn madd(acc: __m512, x: __m512, w: __m512) -> __m512 {
            _mm512_fmadd_ps(x, w, acc)
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn tile<const R: usize, const C: usize>(
            x: &[f32],
            i: usize,
            w: &[W],
            j: usize,
            y: Columns,
            k: usize,
        ) {
            tile::<Self, R, C>(x, i, w, j, y, k)
        }
    }

    impl Kernel for Dot {
        type X = half::bf16;
        type W = half::bf16;
        type XV = __m512bh;
        type WV = __m512bh;
        const STEP: usize = 32;

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
        unsafe fn load_x(p: *const half::bf16) -> __m512bh {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const _))
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
        unsafe fn load_w(p: *const half::bf16) -> __m512bh {
            Self::load_x(p)
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
        unsafe fn load_x_tail(p: *const half::bf16, n: usize) -> __m512bh {
            let mask = (1u64 << n).wrapping_sub(1) as __mmask32;
            std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(
                mask,
                p as *const i16,
            ))
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
        unsafe fn load_w_tail(p: *const half::bf16, n: usize) -> __m512bh {
            Self::load_x_tail(p, n)
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
        unsafe fn madd(acc: __m512, x: __m512bh, w: __m512bh) -> __m512 {
            _mm512_dpbf16_ps(acc, x, w)
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
        unsafe fn tile<const R: usize, const C: usize>(
            x: &[half::bf16],
            i: usize,
            w: &[half::bf16],
            j: usize,
            y: Columns,
            k: usize,
        ) {
            tile::<Self, R, C>(x, i, w, j, y, k)
        }
    }

    fn mask16(n: usize) -> __mmask16 {
        (1u32 << n).wrapping_sub(1) as __mmask16
    }

    /// `out = x` rounded to bf16 (nearest even), 16 at a time; the tail masked rather than
    /// scalar, so every element is rounded by the same instruction whatever the batch.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn round_bf16(x: &[f32], out: &mut [half::bf16]) {
        for (o, v) in out.chunks_mut(16).zip(x.chunks(16)) {
            let mask = mask16(v.len());
            let h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, v.as_ptr()));
            _mm256_mask_storeu_epi16(
                o.as_mut_ptr() as *mut i16,
                mask,
                std::mem::transmute::<__m256bh, __m256i>(h),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_abs_diff as max_diff;
    use crate::kernels::tensor_bits;

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
                let got = matmul_nt(&x, &w, None, None).unwrap();
                assert!(
                    max_diff(&got, &reference(&x, &w)) < 1e-4,
                    "m={m} n={n} k={k}"
                );
                // With AVX-512 BF16, x meets bf16 weights rounded to bf16 itself.
                let wb = w.to_dtype(DType::BF16).unwrap();
                let xb = match bf16_dot_supported() {
                    true => x
                        .to_dtype(DType::BF16)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap(),
                    false => x.clone(),
                };
                let got = matmul_nt(&x, &wb, None, None).unwrap();
                assert!(
                    max_diff(&got, &reference(&xb, &wb)) < 1e-3,
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
        // Where prompt passes run in bf16, a long one's rows go in several pieces.
        let long = match prefill_in_bf16() {
            true => 2 * MAX_ROWS + 11,
            false => 11,
        };
        for (w, m) in [(w.clone(), 11), (stacked_bf16(&[&w], 1).unwrap(), long)] {
            let x = Tensor::randn(0f32, 1., (m, 200), &dev).unwrap();
            let all: Vec<Vec<f32>> = matmul_nt(&x, &w, None, None).unwrap().to_vec2().unwrap();
            for (i, row) in all.iter().enumerate() {
                let one: Vec<Vec<f32>> = matmul_nt(&x.narrow(0, i, 1).unwrap(), &w, None, None)
                    .unwrap()
                    .to_vec2()
                    .unwrap();
                assert_eq!(&one[0], row, "row {i} ({:?})", w.dtype());
            }
        }
    }

    /// The widening kernel serves bf16 weights on AVX-512 CPUs without BF16: checked here
    /// whatever this CPU has.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn widened_bf16_weights_match_gemm() {
        if !cpu_supported() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        let dev = Device::Cpu;
        let (m, n, k) = (5, 37, 67);
        let x = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
        let wb = Tensor::randn(0f32, 1., (n, k), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let got = product::<avx512::Widen<half::bf16>>(
            &x.flatten_all().unwrap().to_vec1().unwrap(),
            m,
            &wb.flatten_all().unwrap().to_vec1().unwrap(),
            n,
            k,
        );
        let got = Tensor::from_vec(got, (m, n), &dev).unwrap();
        assert!(max_diff(&got, &reference(&x, &wb)) < 1e-3);
    }

    #[test]
    fn bf16_copies_round_like_candle() {
        if !bf16_dot_supported() {
            eprintln!("skipped: this CPU lacks AVX-512 BF16 (the copies are candle's own)");
            return;
        }
        let bits = |t: &Tensor| -> Vec<u16> {
            let values = t.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap();
            values.iter().map(|v| v.to_bits()).collect()
        };
        // Ragged length: the masked tail too; mixed magnitudes: the rounding, not the range.
        let w = (Tensor::randn(0f32, 1., (3, 1000 + 7), &Device::Cpu).unwrap() * 1e3).unwrap();
        assert_eq!(
            bits(&stacked_bf16(&[&w], 1).unwrap()),
            bits(&w.to_dtype(DType::BF16).unwrap())
        );
        // Stacked: the rows of each in order; widths must agree.
        let v = Tensor::randn(0f32, 1., (5, 1000 + 7), &Device::Cpu).unwrap();
        let both = Tensor::cat(&[&w, &v], 0)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        assert_eq!(bits(&stacked_bf16(&[&w, &v], 1).unwrap()), bits(&both));
        assert!(stacked_bf16(&[&w, &v.narrow(1, 0, 1000).unwrap()], 1).is_err());
        // By blocks: rows 0-1 of g, 0-1 of u, 2-3 of g, 2-3 of u; a strided g takes candle's way.
        let (g, u) = (v.narrow(0, 0, 4).unwrap(), v.narrow(0, 1, 4).unwrap());
        let rows = |t: &Tensor, a: usize| t.narrow(0, a, 2).unwrap();
        let turns = Tensor::cat(&[rows(&g, 0), rows(&u, 0), rows(&g, 2), rows(&u, 2)], 0)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        assert_eq!(bits(&stacked_bf16(&[&g, &u], 2).unwrap()), bits(&turns));
        let strided = g.t().unwrap().contiguous().unwrap().t().unwrap();
        assert_eq!(
            bits(&stacked_bf16(&[&strided, &u], 2).unwrap()),
            bits(&turns)
        );
        assert!(stacked_bf16(&[&g, &u], 3).is_err(), "4 rows in 3 blocks");
    }

    #[test]
    fn a_gated_product_is_the_gate_of_the_product() {
        if !cpu_supported() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (5, 96), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (64, 96), &dev).unwrap();
        for w in [w.clone(), w.to_dtype(DType::BF16).unwrap()] {
            let y: Vec<f32> = matmul_nt(&x, &w, None, None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = gated_nt(&x, &w).unwrap();
            assert_eq!(got.dims(), &[5, 32]);
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, swiglu::gate_blocks(&y, 64), "{:?}", w.dtype());
        }
        let ragged = Tensor::zeros((48, 96), DType::F32, &dev).unwrap();
        assert!(
            gated_nt(&x, &ragged).is_err(),
            "48 rows are not whole gate and up pairs"
        );
    }

    #[test]
    fn what_a_product_adds_gives_the_bits_of_the_separate_adds() {
        if !cpu_supported() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (5, 96), &dev).unwrap();
        let w = Tensor::randn(0f32, 1., (48, 96), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1., 48, &dev).unwrap();
        let residual = Tensor::randn(0f32, 1., (5, 48), &dev).unwrap();
        for w in [w.clone(), w.to_dtype(DType::BF16).unwrap()] {
            let y = matmul_nt(&x, &w, None, None).unwrap();
            let want = (&residual + y.broadcast_add(&bias).unwrap()).unwrap();
            let got = matmul_nt(&x, &w, Some(&bias), Some(&residual)).unwrap();
            assert_eq!(tensor_bits(&got), tensor_bits(&want), "{:?}", w.dtype());
            let want = y.broadcast_add(&bias).unwrap();
            assert_eq!(
                tensor_bits(&matmul_nt(&x, &w, Some(&bias), None).unwrap()),
                tensor_bits(&want)
            );
        }
        let short = bias.narrow(0, 0, 40).unwrap();
        assert!(
            matmul_nt(&x, &w, Some(&short), None).is_err(),
            "a bias of 40 for 48"
        );
    }

    #[test]
    fn refuses_what_it_cannot_take() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((8, 16), DType::F32, &dev).unwrap();
        assert!(!usable(
            &Tensor::zeros((0, 16), DType::F32, &dev).unwrap(),
            &w
        ));
        let many = Tensor::zeros((MAX_ROWS + 1, 16), DType::F32, &dev).unwrap();
        assert!(!usable(&many, &w));
        let wb = w.to_dtype(DType::BF16).unwrap();
        assert_eq!(usable(&many, &wb), cpu_supported() && prefill_in_bf16());
        assert!(!usable(
            &Tensor::zeros((2, 16), DType::F64, &dev).unwrap(),
            &w
        ));
    }
}
