//! Training's large matrix products in bf16: `dst (m, n) [+]= a (m, k) · b (k, n)` for f32
//! operands in any strides, multiplied as bf16 (rounded to nearest even) with f32 sums, as
//! PyTorch's bf16 autocast multiplies. The policy update is bound by these products (the
//! linear layers' forward, their input gradients and their weight gradients); f32 gemm runs
//! them at ~0.3 TFLOP/s on two cores, Intel's AMX tiles several times faster, and AVX-512
//! BF16's `vdpbf16ps` (AMD Zen 4, Intel Cooper Lake) at twice f32's multiply-adds a cycle.
//!
//! Both operands are packed per call (about m k + k n roundings, small against the m n k
//! products of the sizes that come here): `a` into 16 x 32 A tiles, `b` into the pair-
//! interleaved B tiles, a layout both instruction sets read as it is. Each register block is
//! 32 x 32 of the output (four sum tiles, two A and two B tiles per k block), and blocks are
//! spread over threads in chunks that keep their tiles of `a` and `b` in L2.

use rayon::prelude::*;

use super::amx::{TileConfig, KB, TILE};
use super::gemm::View;
use super::matvec::round_bf16;
use super::Out;

/// Rows (and columns) of the output per register block.
const BLOCK: usize = 2 * TILE;

/// A register block's sums, row-major, aligned for whole-vector and tile stores.
#[repr(C, align(64))]
struct Sums([f32; BLOCK * BLOCK]);
/// Register blocks per thread task, down and across.
const CHUNK: usize = 4;
/// Fewest multiply-adds a product needs to be worth packing for the tiles.
const MIN_WORK: usize = 1 << 21;

/// Whether a product of these sizes runs in bf16 here.
pub fn fits(m: usize, n: usize, k: usize) -> bool {
    m * n * k >= MIN_WORK && supported()
}

/// Whether this CPU multiplies bf16 pairs: on AMX tiles or with AVX-512 BF16.
pub fn supported() -> bool {
    super::amx::supported() || super::matvec::bf16_dot_supported()
}

/// `dst = (read_dst ? dst : 0) + a · b` over the views (shapes checked by the caller).
///
/// # Safety
/// [`supported`] must hold, and `dst` must be valid for reads and writes of every element of
/// `dv`.
pub unsafe fn product(
    dst: *mut f32,
    dv: View,
    read_dst: bool,
    a: &[f32],
    av: View,
    b: &[f32],
    bv: View,
) {
    let mut packed_b = take(&SCRATCH_B);
    pack_b(b, bv, &mut packed_b);
    multiply(dst, dv, read_dst, a, av, &packed_b, bv.cols);
    keep(&SCRATCH_B, packed_b);
}

/// `b (k, n)` as B tiles, packed once for products that multiply the same `b` again: the LM
/// head (136 M values) takes three products per chunk of 128 positions, and packed per
/// product it took as much time as they did.
pub struct PackedB {
    tiles: Vec<u32>,
    rows: usize,
    cols: usize,
}

impl PackedB {
    pub fn new(b: &[f32], bv: View) -> Self {
        let mut tiles = Vec::new();
        pack_b(b, bv, &mut tiles);
        Self {
            tiles,
            rows: bv.rows,
            cols: bv.cols,
        }
    }

    /// The shape of `b`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// [`product`] with `b` packed beforehand.
///
/// # Safety
/// As [`product`]'s, with `av.cols` equal to `b`'s rows.
pub unsafe fn product_packed(
    dst: *mut f32,
    dv: View,
    read_dst: bool,
    a: &[f32],
    av: View,
    b: &PackedB,
) {
    multiply(dst, dv, read_dst, a, av, &b.tiles, b.cols);
}

/// The product of `a` with B tiles of `n` columns.
///
/// # Safety
/// As [`product`]'s.
unsafe fn multiply(
    dst: *mut f32,
    dv: View,
    read_dst: bool,
    a: &[f32],
    av: View,
    packed_b: &[u32],
    n: usize,
) {
    let (m, k) = (av.rows, av.cols);
    let kb = k.div_ceil(KB);
    let (row_blocks, col_blocks) = (m.div_ceil(BLOCK), n.div_ceil(BLOCK));
    let mut packed_a = take(&SCRATCH_A);
    pack_a(a, av, 2 * row_blocks, kb, &mut packed_a);
    let across = col_blocks.div_ceil(CHUNK);
    let out = Out(dst);
    (0..row_blocks.div_ceil(CHUNK) * across)
        .into_par_iter()
        .for_each(|task| {
            let rows = (task / across) * CHUNK..((task / across + 1) * CHUNK).min(row_blocks);
            let cols = (task % across) * CHUNK..((task % across + 1) * CHUNK).min(col_blocks);
            let emit = |i: usize, j: usize, sums: &[f32]| {
                let cols = BLOCK.min(n - j * BLOCK);
                for r in 0..BLOCK.min(m - i * BLOCK) {
                    let (row, sums) = (i * BLOCK + r, &sums[r * BLOCK..r * BLOCK + cols]);
                    // SAFETY: the row's columns lie in dv, which the caller vouches for, and
                    // belong to this task's blocks only.
                    unsafe { put_row(out.get(), dv, row, j * BLOCK, sums, read_dst) };
                }
            };
            // SAFETY: the caller checked `supported`; the packed buffers hold every tile of
            // these blocks.
            unsafe { blocks(&packed_a, packed_b, kb, rows, cols, emit) };
        });
    keep(&SCRATCH_A, packed_a);
}

type Scratch<T> = std::thread::LocalKey<std::cell::RefCell<Vec<T>>>;

thread_local! {
    /// Packed operands kept between products: a fresh buffer of this size comes from the
    /// kernel page by page, each page faulted and zeroed; a kept one is only zeroed by
    /// `resize`.
    static SCRATCH_A: std::cell::RefCell<Vec<half::bf16>> = Default::default();
    static SCRATCH_B: std::cell::RefCell<Vec<u32>> = Default::default();
}

/// This thread's kept buffer, or a new one when it is in use (a product nested in another).
fn take<T>(scratch: &'static Scratch<T>) -> Vec<T> {
    scratch.with(|s| {
        s.try_borrow_mut()
            .map(|mut kept| std::mem::take(&mut *kept))
            .unwrap_or_default()
    })
}

/// Keeps `buffer` for this thread's next product.
fn keep<T>(scratch: &'static Scratch<T>, buffer: Vec<T>) {
    scratch.with(|s| {
        if let Ok(mut slot) = s.try_borrow_mut() {
            *slot = buffer;
        }
    });
}

/// Writes (or adds) `sums` into row `row` of `dv` from column `col`.
///
/// # Safety
/// The elements must lie in `dv` and `dst` be valid for them.
unsafe fn put_row(dst: *mut f32, dv: View, row: usize, col: usize, sums: &[f32], add: bool) {
    if dv.contiguous_rows() {
        let out = std::slice::from_raw_parts_mut(dst.add(dv.at(row, col)), sums.len());
        match add {
            true => out.iter_mut().zip(sums).for_each(|(o, s)| *o += s),
            false => out.copy_from_slice(sums),
        }
    } else {
        for (c, s) in sums.iter().enumerate() {
            let p = dst.add(dv.at(row, col + c));
            *p = if add { *p + s } else { *s };
        }
    }
}

/// Row `i` of a view from column 0, as a slice, when its rows are contiguous.
fn row_of(x: &[f32], v: View, i: usize) -> Option<&[f32]> {
    v.contiguous_rows()
        .then(|| &x[v.at(i, 0)..v.at(i, 0) + v.cols])
}

/// Column `j` of a view from row 0, as a slice, when its columns are contiguous.
fn column_of(x: &[f32], v: View, j: usize) -> Option<&[f32]> {
    row_of(x, v.t(), j)
}

/// `a (m, k)` as A tiles: row block r, k block q is 16 rows of 32 bf16 at (r kb + q) 512,
/// zeros past the edges.
fn pack_a(a: &[f32], av: View, blocks: usize, kb: usize, packed: &mut Vec<half::bf16>) {
    let tile = TILE * KB;
    packed.clear();
    packed.resize(blocks * kb * tile, half::bf16::ZERO);
    packed
        .par_chunks_mut(kb * tile)
        .enumerate()
        .for_each(|(rb, tiles)| {
            let rows = rb * TILE..((rb + 1) * TILE).min(av.rows);
            if rows.is_empty() {
                return; // a padding block: zeros
            }
            if !av.contiguous_rows() && av.t().contiguous_rows() {
                // Columns contiguous (a transposed matrix): 16 rows of a column at a time.
                let height = rows.len();
                #[cfg(target_arch = "x86_64")]
                if super::matvec::bf16_dot_supported() && simd::gathers(av) {
                    for (q, tile) in tiles.chunks_exact_mut(TILE * KB).enumerate() {
                        let count = KB.min(av.cols - q * KB);
                        for (r, out) in tile.chunks_exact_mut(KB).take(height).enumerate() {
                            let first = av.at(rows.start + r, q * KB);
                            // SAFETY: AVX-512 BF16 was detected; the row's `count` k-values
                            // lie in `a` (the view was checked against it by the caller).
                            unsafe { simd::gather_row(&a[first..], av, count, out) };
                        }
                    }
                    return;
                }
                let mut rounded = [half::bf16::ZERO; TILE];
                for c in 0..av.cols {
                    let start = av.at(rows.start, c);
                    round_bf16(&a[start..start + height], &mut rounded[..height]);
                    let at = (c / KB) * tile + c % KB;
                    for (r, v) in rounded[..height].iter().enumerate() {
                        tiles[at + r * KB] = *v;
                    }
                }
                return;
            }
            let mut rounded = vec![half::bf16::ZERO; av.cols];
            for r in rows {
                match row_of(a, av, r) {
                    Some(row) => round_bf16(row, &mut rounded),
                    None => {
                        (0..av.cols).for_each(|c| rounded[c] = half::bf16::from_f32(a[av.at(r, c)]))
                    }
                }
                for (q, chunk) in rounded.chunks(KB).enumerate() {
                    let at = q * tile + (r % TILE) * KB;
                    tiles[at..at + chunk.len()].copy_from_slice(chunk);
                }
            }
        });
}

/// `b (k, n)` as B tiles: column block j, k block q is 16 rows (k pairs) of 16 columns at
/// (j kb + q) 256, each a pair of bf16 k-values as one u32, zeros past the edges; k pair p
/// of column c sits at p 16 + c of its column block.
fn pack_b(b: &[f32], bv: View, packed: &mut Vec<u32>) {
    // Whole register blocks of columns (two tiles each), whole k blocks of rows.
    let (blocks, kb) = (2 * bv.cols.div_ceil(BLOCK), bv.rows.div_ceil(KB));
    packed.clear();
    packed.resize(blocks * kb * TILE * TILE, 0);
    let pair =
        |lo: half::bf16, hi: half::bf16| u32::from(lo.to_bits()) | u32::from(hi.to_bits()) << 16;
    packed
        .par_chunks_mut(kb * TILE * TILE)
        .enumerate()
        .for_each(|(cb, tiles)| {
            let cols = cb * TILE..((cb + 1) * TILE).min(bv.cols);
            if cols.is_empty() {
                return; // a padding block: zeros
            }
            if !bv.t().contiguous_rows() && bv.contiguous_rows() {
                // Rows contiguous: two rows' 16 columns make a row of pairs.
                let width = cols.len();
                #[cfg(target_arch = "x86_64")]
                if super::matvec::bf16_dot_supported() {
                    for (p, out) in tiles
                        .chunks_exact_mut(TILE)
                        .take(bv.rows.div_ceil(2))
                        .enumerate()
                    {
                        let lo = &b[bv.at(2 * p, cols.start)..][..width];
                        let hi = (2 * p + 1 < bv.rows)
                            .then(|| &b[bv.at(2 * p + 1, cols.start)..][..width]);
                        // SAFETY: AVX-512 BF16 was detected; the slices hold `width` values.
                        unsafe { simd::pair_rows(lo, hi, out) };
                    }
                    return;
                }
                let (mut lo, mut hi) = ([half::bf16::ZERO; TILE], [half::bf16::ZERO; TILE]);
                for p in 0..bv.rows.div_ceil(2) {
                    let start = bv.at(2 * p, cols.start);
                    round_bf16(&b[start..start + width], &mut lo[..width]);
                    match 2 * p + 1 < bv.rows {
                        true => {
                            let start = bv.at(2 * p + 1, cols.start);
                            round_bf16(&b[start..start + width], &mut hi[..width]);
                        }
                        false => hi.fill(half::bf16::ZERO),
                    }
                    for c in 0..width {
                        tiles[p * TILE + c] = pair(lo[c], hi[c]);
                    }
                }
                return;
            }
            let mut rounded = vec![half::bf16::ZERO; bv.rows + 1];
            for c in cols {
                // A column of b, rounded, is its pairs in order.
                match column_of(b, bv, c) {
                    Some(column) => round_bf16(column, &mut rounded[..bv.rows]),
                    None => {
                        (0..bv.rows).for_each(|r| rounded[r] = half::bf16::from_f32(b[bv.at(r, c)]))
                    }
                }
                rounded[bv.rows] = half::bf16::ZERO;
                for (p, two) in rounded.chunks_exact(2).enumerate() {
                    tiles[p * TILE + c % TILE] = pair(two[0], two[1]);
                }
            }
        });
}

/// Packing 16 or 32 values per instruction: packed a value at a time, the operands took as
/// many of the update's samples as the tiles' products (the LM head's 136 M weights are
/// packed per chunk of positions).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::View;
    use std::arch::x86_64::*;

    /// Whether a 32-value gather along a row of `v` fits the instruction's i32 offsets.
    pub fn gathers(v: View) -> bool {
        v.at(0, 31).saturating_sub(v.at(0, 0)) < i32::MAX as usize / 4
    }

    fn mask(n: usize) -> __mmask16 {
        (1u32 << n.min(16)).wrapping_sub(1) as __mmask16
    }

    /// One B-tile row: `lo[c]` and `hi[c]` rounded to bf16 as the pair `lo | hi << 16` for
    /// each of up to 16 columns, zeros past them and for a missing `hi`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pair_rows(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
        const INTERLEAVE: [u16; 32] = {
            let mut idx = [0u16; 32];
            let mut c = 0;
            while c < 16 {
                idx[2 * c] = c as u16;
                idx[2 * c + 1] = 16 + c as u16;
                c += 1;
            }
            idx
        };
        debug_assert!(lo.len() <= 16 && out.len() == 16);
        let m = mask(lo.len());
        let l = _mm512_maskz_loadu_ps(m, lo.as_ptr());
        let h = hi.map_or(_mm512_setzero_ps(), |h| {
            _mm512_maskz_loadu_ps(m, h.as_ptr())
        });
        // Low 16 bf16 from `l`, high 16 from `h`, rounded as `_mm512_cvtneps_pbh` rounds.
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(h, l));
        let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr().cast());
        _mm512_storeu_si512(out.as_mut_ptr().cast(), _mm512_permutexvar_epi16(idx, both));
    }

    /// One A-tile row: `count` (<= 32) k-values of a row of `v` starting at `x[0]`, rounded
    /// to bf16, zeros past them.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn gather_row(x: &[f32], v: View, count: usize, out: &mut [half::bf16]) {
        debug_assert!(count <= 32 && out.len() == 32);
        let step = (v.at(0, 1) - v.at(0, 0)) as i32;
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(step),
        );
        let zero = _mm512_setzero_ps();
        let lo = _mm512_mask_i32gather_ps::<4>(zero, mask(count), offsets, x.as_ptr());
        let hi = match count > 16 {
            true => {
                let second = x[16 * step as usize..].as_ptr();
                _mm512_mask_i32gather_ps::<4>(zero, mask(count - 16), offsets, second)
            }
            false => zero,
        };
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(out.as_mut_ptr().cast(), both);
    }
}

/// The register blocks with AVX-512 BF16, from the tiles' layout: a B-tile row is 16 columns'
/// k pairs (one vector), an A-tile row's k pair is one broadcast, and `vdpbf16ps` adds their
/// pair products into 16 column sums. Eight rows by two vectors of columns at a time keep 16
/// sums in registers over all of k; each output is one sequential sum over k pairs.
#[cfg(target_arch = "x86_64")]
mod dots {
    use super::{Sums, BLOCK, KB, TILE};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Rows of a block whose sums stay in registers together.
    const ROWS: usize = 8;

    /// [`super::blocks`] with AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn blocks(
        a: &[half::bf16],
        b: &[u32],
        kb: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        emit: impl Fn(usize, usize, &[f32]),
    ) {
        let mut sums = Sums([0.0; BLOCK * BLOCK]);
        let (a_tile, b_tile) = (TILE * KB, TILE * TILE);
        for j in cols {
            let b0 = b.as_ptr().add(2 * j * kb * b_tile);
            let b1 = b0.add(kb * b_tile);
            for i in rows.clone() {
                for r0 in (0..BLOCK).step_by(ROWS) {
                    // Rows r0.. of the block: in A tile 2i + r0 / 16, from row r0 % 16.
                    let a = a
                        .as_ptr()
                        .add((2 * i + r0 / TILE) * kb * a_tile + (r0 % TILE) * KB)
                        .cast::<i32>();
                    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
                    for q in 0..kb {
                        let (a, b0, b1) = (
                            a.add(q * a_tile / 2),
                            b0.add(q * b_tile),
                            b1.add(q * b_tile),
                        );
                        for p in 0..KB / 2 {
                            let v0: __m512bh =
                                std::mem::transmute(_mm512_loadu_si512(b0.add(p * TILE).cast()));
                            let v1: __m512bh =
                                std::mem::transmute(_mm512_loadu_si512(b1.add(p * TILE).cast()));
                            for (r, acc) in acc.iter_mut().enumerate() {
                                let pair: __m512bh =
                                    std::mem::transmute(_mm512_set1_epi32(*a.add(r * KB / 2 + p)));
                                acc[0] = _mm512_dpbf16_ps(acc[0], pair, v0);
                                acc[1] = _mm512_dpbf16_ps(acc[1], pair, v1);
                            }
                        }
                    }
                    for (r, acc) in acc.iter().enumerate() {
                        let row = sums.0.as_mut_ptr().add((r0 + r) * BLOCK);
                        _mm512_store_ps(row, acc[0]);
                        _mm512_store_ps(row.add(TILE), acc[1]);
                    }
                }
                emit(i, j, &sums.0);
            }
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod tiles {
    use super::{Sums, TileConfig, BLOCK, KB, TILE};
    use std::arch::asm;
    use std::ops::Range;

    /// [`super::blocks`] on AMX tiles.
    pub unsafe fn blocks(
        a: &[half::bf16],
        b: &[u32],
        kb: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        emit: impl Fn(usize, usize, &[f32]),
    ) {
        // Registers 0-3 the sums, 4-5 two A tiles, 6-7 two B tiles.
        let cfg = TileConfig::new(8);
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        let mut sums = Sums([0.0; BLOCK * BLOCK]);
        let (a_tile, b_tile) = (TILE * KB, TILE * TILE);
        for j in cols {
            for i in rows.clone() {
                super::super::amx::zero_sums();
                let a0 = a.as_ptr().add(2 * i * kb * a_tile);
                let a1 = a0.add(kb * a_tile);
                let b0 = b.as_ptr().add(2 * j * kb * b_tile);
                let b1 = b0.add(kb * b_tile);
                for q in 0..kb {
                    asm!(
                        "tileloadd tmm4, [{a0} + {s}*1]",
                        "tileloadd tmm5, [{a1} + {s}*1]",
                        "tileloadd tmm6, [{b0} + {s}*1]",
                        "tileloadd tmm7, [{b1} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0.add(q * a_tile),
                        a1 = in(reg) a1.add(q * a_tile),
                        b0 = in(reg) b0.add(q * b_tile),
                        b1 = in(reg) b1.add(q * b_tile),
                        s = in(reg) 64usize,
                        options(nostack, readonly)
                    );
                }
                let s = sums.0.as_mut_ptr();
                asm!(
                    "tilestored [{p0} + {s}*1], tmm0",
                    "tilestored [{p1} + {s}*1], tmm1",
                    "tilestored [{p2} + {s}*1], tmm2",
                    "tilestored [{p3} + {s}*1], tmm3",
                    p0 = in(reg) s,
                    p1 = in(reg) s.add(TILE),
                    p2 = in(reg) s.add(TILE * BLOCK),
                    p3 = in(reg) s.add(TILE * BLOCK + TILE),
                    s = in(reg) BLOCK * 4,
                    options(nostack)
                );
                emit(i, j, &sums.0);
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// The register blocks `rows` x `cols` (in blocks of 32), column block by column block, each
/// handed to `emit` as 32 x 32 sums (row-major): on AMX tiles where the CPU has them, else
/// with AVX-512 BF16.
///
/// # Safety
/// [`supported`] must hold, and the packed buffers hold every tile of these blocks.
#[cfg(target_arch = "x86_64")]
unsafe fn blocks(
    a: &[half::bf16],
    b: &[u32],
    kb: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    emit: impl Fn(usize, usize, &[f32]),
) {
    #[cfg(target_os = "linux")]
    if super::amx::supported() {
        return tiles::blocks(a, b, kb, rows, cols, emit);
    }
    dots::blocks(a, b, kb, rows, cols, emit)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn blocks(
    _: &[half::bf16],
    _: &[u32],
    _: usize,
    _: std::ops::Range<usize>,
    _: std::ops::Range<usize>,
    _: impl Fn(usize, usize, &[f32]),
) {
    unreachable!("bf16 products are detected on x86_64 only")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{CpuStorage, DType, Device, Tensor};

    /// `t` rounded to bf16, in f64.
    fn rounded(t: &Tensor) -> Tensor {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn view(t: &Tensor) -> View {
        View::of(t.layout()).unwrap()
    }

    #[test]
    fn tiles_match_the_exact_product_of_the_rounded_operands_in_any_layout() {
        if !supported() {
            eprintln!(
                "skipped: this CPU or OS multiplies no bf16 pairs (no AMX-BF16 or AVX-512 BF16)"
            );
            return;
        }
        let dev = Device::Cpu;
        // Whole tiles, ragged edges everywhere, and one row or column.
        for (m, n, k) in [
            (64, 64, 64),
            (37, 50, 70),
            (1, 33, 31),
            (130, 1, 96),
            (200, 160, 900),
        ] {
            let a = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
            let bt = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
            let want = rounded(&a).matmul(&rounded(&bt).t().unwrap()).unwrap();
            let (av, btv) = (view(&a), view(&bt));
            let (a, bt) = (f32s(&a), f32s(&bt));
            // a · btᵀ (b strided), written whole.
            let mut out = vec![f32::NAN; m * n];
            let dv = View::of(Tensor::zeros((m, n), DType::F32, &dev).unwrap().layout()).unwrap();
            unsafe { product(out.as_mut_ptr(), dv, false, &a, av, &bt, btv.t()) };
            let got = Tensor::from_vec(out.clone(), (m, n), &dev).unwrap();
            let diff = crate::kernels::max_abs_diff(&got, &want);
            assert!(diff < 1e-4 * (k as f32).sqrt(), "m={m} n={n} k={k}: {diff}");
            // With b packed beforehand: the same bits.
            let packed = PackedB::new(&bt, btv.t());
            let mut again = vec![f32::NAN; m * n];
            unsafe { product_packed(again.as_mut_ptr(), dv, false, &a, av, &packed) };
            assert_eq!(again, out, "packed bᵀ, m={m} n={n} k={k}");
            // The same added into a transposed destination holding ones: (bt · aᵀ)ᵀ + 1.
            let mut dst = vec![1f32; n * m];
            let dt = View::of(Tensor::zeros((n, m), DType::F32, &dev).unwrap().layout())
                .unwrap()
                .t();
            unsafe { product(dst.as_mut_ptr(), dt, true, &a, av, &bt, btv.t()) };
            let got = Tensor::from_vec(dst, (n, m), &dev).unwrap().t().unwrap();
            let want = (want + 1.0).unwrap();
            let diff = crate::kernels::max_abs_diff(&got, &want);
            assert!(
                diff < 1e-4 * (k as f32).sqrt(),
                "added, m={m} n={n} k={k}: {diff}"
            );
            // A transposed lhs and a row-major rhs (a weight gradient's shapes): cᵀ · d.
            let c = Tensor::randn(0f32, 1., (k, m), &dev).unwrap();
            let d = Tensor::randn(0f32, 1., (k, n), &dev).unwrap();
            let want = rounded(&c).t().unwrap().matmul(&rounded(&d)).unwrap();
            let (cv, dv2) = (view(&c).t(), view(&d));
            let mut out = vec![f32::NAN; m * n];
            unsafe { product(out.as_mut_ptr(), dv, false, &f32s(&c), cv, &f32s(&d), dv2) };
            let packed = PackedB::new(&f32s(&d), dv2);
            let mut again = vec![f32::NAN; m * n];
            unsafe { product_packed(again.as_mut_ptr(), dv, false, &f32s(&c), cv, &packed) };
            assert_eq!(again, out, "packed d, m={m} n={n} k={k}");
            let got = Tensor::from_vec(out, (m, n), &dev).unwrap();
            let diff = crate::kernels::max_abs_diff(&got, &want);
            assert!(
                diff < 1e-4 * (k as f32).sqrt(),
                "cᵀ d, m={m} n={n} k={k}: {diff}"
            );
        }
    }

    #[test]
    fn gemm_takes_the_tiles_only_for_large_f32_products_when_asked() {
        use crate::kernels::gemm::{product, Products};
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1., (256, 512), &dev).unwrap();
        let b = Tensor::randn(0f32, 1., (512, 256), &dev).unwrap();
        let storage = |t: &Tensor| CpuStorage::F32(f32s(t));
        let exact = product(
            &storage(&a),
            view(&a),
            &storage(&b),
            view(&b),
            Products::F32,
        )
        .unwrap();
        let tiled = product(
            &storage(&a),
            view(&a),
            &storage(&b),
            view(&b),
            Products::Bf16,
        )
        .unwrap();
        let (exact, tiled) = (
            exact.as_slice::<f32>().unwrap(),
            tiled.as_slice::<f32>().unwrap(),
        );
        let want = a.matmul(&b).unwrap();
        assert!(
            crate::kernels::max_abs_diff(
                &Tensor::new(exact, &dev).unwrap(),
                &want.flatten_all().unwrap()
            ) < 1e-3
        );
        // On AMX the bf16 roundings show; without it the request falls back to exact f32.
        assert_eq!(exact == tiled, !fits(256, 256, 512));
        assert!(!fits(8, 8, 8));
    }
}
