//! The generation product on Intel AMX: `y (m, n) = x (m, k) · w (n, k)ᵀ` with bf16 tiles,
//! for decode steps and, as a row's bits do not depend on how many rows come with it, for
//! prompt passes too.
//!
//! One `tdpbf16ps` multiplies a 16 x 32 tile of weights by 32 x 16 of `x` (512 bf16 pair
//! products into 256 f32 sums), sixteen times the work of a `vdpbf16ps`, so even 64 rows of a
//! decode step cost little more than streaming the weights once. The weight tiles load
//! straight from the HF layout (16 rows of `w`, 32 k-values each); `x` is packed once per call
//! into the pair-interleaved layout the B tile wants, 16 rows per column group, zeros after
//! the last row. Every output element is one sequential sum over k pairs whatever the other
//! rows are, so a row's bits still do not depend on its batch. Two weight blocks meet two
//! column groups at a time (all eight tile registers); past 32 rows the weight blocks are
//! read from memory once and from L2 after.
//!
//! Linux hands the tile registers to a process only on request (`arch_prctl`), made once in
//! [`supported`]. Stable Rust has no AMX intrinsics; the five instructions are inline asm.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Columns, Out, Plus};

/// Rows of `w` and columns of `x` per tile.
pub(super) const TILE: usize = 16;
/// k-values per tile: 16 rows of 64 bytes of bf16.
pub(super) const KB: usize = 32;
/// Rows of `x` packed and multiplied together.
const PIECE: usize = 128;

/// Whether this CPU has AMX-BF16 and this process may use the tile registers (and AVX-512
/// BF16, which every AMX CPU has and the packing rounds with).
pub fn supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID.(7,0):EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            edx & (1 << 22) != 0
                && edx & (1 << 24) != 0
                && super::matvec::bf16_dot_supported()
                // SAFETY: a plain syscall; it only changes which xsave features this process may use.
                && unsafe {
                    libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
                } == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        false
    })
}

/// Whether a product of these sizes runs on tiles: whole k blocks and whole 16-row w blocks
/// (every decoder here has them), any number of rows of `x`. The choice depends on the
/// weight's shape, never on the batch.
pub fn fits(m: usize, n: usize, k: usize) -> bool {
    m > 0 && n.is_multiple_of(TILE) && k.is_multiple_of(KB) && k > 0
}

/// `x (m, k) · w (n, k)ᵀ -> (m, n)`, x rounded to bf16 (nearest even) on the way in, w bf16.
/// Callers check [`supported`] and [`fits`].
pub fn product(x: &[f32], m: usize, w: &[half::bf16], n: usize, k: usize, plus: Plus) -> Vec<f32> {
    run::<false>(x, m, w, n, k, plus)
}

/// `silu(g) ⊙ u` (m, n / 2) of the product with `w` (n, k) whose rows alternate 16 of the
/// gate's and 16 of up's (the layout of [`crate::kernels::swiglu::gate_blocks`]): each pair of
/// sum tiles meets in registers and only the gate's output is written, not the product's
/// twice as wide one read back. Callers check [`supported`] and [`fits`].
pub fn gated_product(x: &[f32], m: usize, w: &[half::bf16], n: usize, k: usize) -> Vec<f32> {
    assert!(
        n.is_multiple_of(2 * TILE),
        "gate and up blocks come in pairs"
    );
    run::<true>(x, m, w, n, k, Plus::default())
}

/// [`product`], or with `GATED` [`gated_product`] (which adds nothing).
fn run<const GATED: bool>(
    x: &[f32],
    m: usize,
    w: &[half::bf16],
    n: usize,
    k: usize,
    plus: Plus,
) -> Vec<f32> {
    assert!(supported() && fits(m, n, k) && x.len() == m * k && w.len() == n * k);
    assert!(
        plus.bias.is_none_or(|b| b.len() == n) && plus.residual.is_none_or(|r| r.len() == m * n)
    );
    let packed = pack(x, m, k);
    // Columns of y.
    let width = if GATED { n / 2 } else { n };
    let mut y: Vec<f32> = Vec::with_capacity(m * width);
    // A prompt pass's rows go in pieces whose packed tiles stay in L2 (the weights are
    // streamed once a piece): with all of a long prompt's rows at once, every weight block
    // re-read megabytes of x from memory.
    let piece_len = PIECE / TILE * (k / KB) * TILE * TILE;
    for (p, packed) in packed.chunks(piece_len).enumerate() {
        let m = (m - p * PIECE).min(PIECE);
        // SAFETY: this piece's rows of y lie within the capacity.
        let out = Out(unsafe { y.as_mut_ptr().add(p * PIECE * width) });
        let plus = Plus {
            residual: plus.residual.map(|r| &r[p * PIECE * n..]),
            ..plus
        };
        // Ranges of whole pairs of 16-row weight blocks (a gated pair: a gate's and up's).
        super::for_each_range(n / TILE, 2, |blocks| {
            let y = Columns {
                y: out.get(),
                n: width,
                first: blocks.start * TILE * width / n,
                plus,
            };
            let w = &w[blocks.start * TILE * k..blocks.end * TILE * k];
            // SAFETY: `supported` checked the CPU and got the OS's leave; `w` holds whole
            // 16-row blocks, whose columns of y (from `first`) only this range writes, and
            // `packed` holds the piece's column groups.
            unsafe { tiles::block::<GATED>(packed, m.div_ceil(TILE), m, w, y, k) }
        });
    }
    // SAFETY: the pieces cover all m rows, and each piece's tasks all the columns.
    unsafe { y.set_len(m * width) };
    y
}

impl Columns<'_> {
    /// Writes the tile `sums` (16 rows of w by 16 rows of x, x rows `group * 16..` of which
    /// `cols` are real) for w rows `row..row + 16` of this task, with what `plus` adds: each
    /// x row's 16 sums are one contiguous run of y, a column of the tile (transposed in
    /// registers; a gather a column was ~4% of a batch-32 decode step, element by element
    /// more).
    ///
    /// # Safety
    /// The rows and columns must lie in y and belong to this task, on a CPU with AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn put(&self, sums: &[f32; TILE * TILE], row: usize, group: usize, cols: usize) {
        use std::arch::x86_64::*;
        for (c, column) in tile_columns(sums).iter().enumerate().take(cols) {
            let mut y = *column;
            if let Some(bias) = self.plus.bias {
                y = _mm512_add_ps(y, _mm512_loadu_ps(bias.as_ptr().add(self.first + row)));
            }
            let at = (group * TILE + c) * self.n + self.first + row;
            if let Some(residual) = self.plus.residual {
                y = _mm512_add_ps(_mm512_loadu_ps(residual.as_ptr().add(at)), y);
            }
            _mm512_storeu_ps(self.y.add(at), y);
        }
    }

    /// [`Self::put`] of `silu(gate) ⊙ up` for two tiles of sums over the same x rows and
    /// output columns `col..col + 16`, by [`crate::kernels::swiglu::gate_lanes`].
    ///
    /// # Safety
    /// As for [`Self::put`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn put_gated(
        &self,
        gate: &[f32; TILE * TILE],
        up: &[f32; TILE * TILE],
        col: usize,
        group: usize,
        cols: usize,
    ) {
        use std::arch::x86_64::*;
        let (gate, up) = (tile_columns(gate), tile_columns(up));
        for c in 0..cols {
            let out = super::swiglu::gate_lanes(gate[c], up[c]);
            _mm512_storeu_ps(self.at(group * TILE + c, col), out);
        }
    }
}

/// The 16 columns of a row-major tile of sums, each in a register: a column is one x row's
/// sums for 16 consecutive outputs. (A plain function: inside a closure `pack::transpose`
/// stayed out of line, and the gated product was ~20% slower.)
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile_columns(sums: &[f32; TILE * TILE]) -> [std::arch::x86_64::__m512; TILE] {
    use std::arch::x86_64::*;
    let mut rows = [_mm512_setzero_si512(); TILE];
    for (i, row) in rows.iter_mut().enumerate() {
        *row = _mm512_loadu_si512(sums.as_ptr().add(i * TILE).cast());
    }
    std::mem::transmute::<[__m512i; TILE], [__m512; TILE]>(pack::transpose(rows))
}

/// `x` rounded to bf16 and laid out as B tiles: for column group g and k block b, 16 rows (k
/// pairs) of 16 columns (rows of `x`), each a pair of adjacent bf16 k-values read as one u32;
/// zeros after the last row. Column groups are packed in parallel (with the pool's workers
/// polling, even a decode step's two gain from it).
fn pack(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let group_len = k / KB * TILE * TILE;
    let len = m.div_ceil(TILE) * group_len;
    let mut packed: Vec<u32> = Vec::with_capacity(len);
    // SAFETY: the caller checked AVX-512 BF16; each call gets whole rows of x and its own
    // group of `packed`, all of which it writes.
    let group = |(dst, rows): (&mut [std::mem::MaybeUninit<u32>], &[f32])| unsafe {
        pack::group(rows, k, dst.as_mut_ptr().cast())
    };
    packed.spare_capacity_mut()[..len]
        .par_chunks_mut(group_len)
        .zip(x.par_chunks(TILE * k))
        .for_each(group);
    // SAFETY: every group wrote all of its tiles.
    unsafe { packed.set_len(len) };
    packed
}

#[cfg(target_arch = "x86_64")]
mod pack {
    use super::{KB, TILE};
    use std::arch::x86_64::*;

    /// One column group: up to 16 rows of x, each k block's 32 values rounded into 16 pairs
    /// (`vcvtne2ps2bf16`, the rounding of [`crate::kernels::matvec::round_bf16`]), the 16
    /// rows' pairs transposed into the block's tile, zeros for missing rows.
    ///
    /// # Safety
    /// `dst` has room for the group's k / 32 tiles.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn group(rows: &[f32], k: usize, dst: *mut u32) {
        for b in 0..k / KB {
            let mut pairs = [_mm512_setzero_si512(); TILE];
            for (pair, row) in pairs.iter_mut().zip(rows.chunks_exact(k)) {
                let v = row.as_ptr().add(b * KB);
                let (lo, hi) = (_mm512_loadu_ps(v), _mm512_loadu_ps(v.add(16)));
                *pair = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            }
            for (r, tile_row) in transpose(pairs).iter().enumerate() {
                _mm512_storeu_si512(dst.add((b * TILE + r) * TILE) as *mut _, *tile_row);
            }
        }
    }

    /// A 16 x 16 matrix of 32-bit elements transposed: row i of the result is column i of
    /// `r`. 64 shuffles: pairs of elements, then pairs of pairs, then 128-bit quarters twice.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose(r: [__m512i; TILE]) -> [__m512i; TILE] {
        // t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved, elements 0-1 and 2-3 of each quarter.
        let t: [__m512i; TILE] = std::array::from_fn(|j| match j % 2 {
            0 => _mm512_unpacklo_epi32(r[j], r[j + 1]),
            _ => _mm512_unpackhi_epi32(r[j - 1], r[j]),
        });
        // u[4i + e]: rows 4i..4i + 4 of columns e, e + 4, e + 8, e + 12 (one per quarter).
        let u: [__m512i; TILE] = std::array::from_fn(|j| {
            let (base, e) = (j / 4 * 4, j % 4);
            let (a, b) = (t[base + e / 2], t[base + 2 + e / 2]);
            match e % 2 {
                0 => _mm512_unpacklo_epi64(a, b),
                _ => _mm512_unpackhi_epi64(a, b),
            }
        });
        // v[4e + h]: quarters of rows 0-7 (h 0-1) or 8-15 (h 2-3) holding columns e and e + 8
        // (h even) or e + 4 and e + 12 (h odd).
        let v: [__m512i; TILE] = std::array::from_fn(|j| {
            let (e, h) = (j / 4, j % 4);
            let (a, b) = (u[8 * (h / 2) + e], u[8 * (h / 2) + 4 + e]);
            match h % 2 {
                0 => _mm512_shuffle_i32x4::<0x88>(a, b),
                _ => _mm512_shuffle_i32x4::<0xdd>(a, b),
            }
        });
        // Column c = e + 4 q: from v[4e + q % 2] (rows 0-7) and v[4e + 2 + q % 2] (rows 8-15).
        std::array::from_fn(|c| {
            let (e, q) = (c % 4, c / 4);
            let (a, b) = (v[4 * e + q % 2], v[4 * e + 2 + q % 2]);
            match q / 2 {
                0 => _mm512_shuffle_i32x4::<0x88>(a, b),
                _ => _mm512_shuffle_i32x4::<0xdd>(a, b),
            }
        })
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod pack {
    pub unsafe fn group(_: &[f32], _: usize, _: *mut u32) {
        unreachable!("AMX is detected on x86_64 only")
    }
}

/// A tile configuration (`ldtilecfg`'s 64 bytes): palette 1, the first `count` registers
/// each 16 rows of 64 bytes.
#[repr(C, align(64))]
pub(super) struct TileConfig(pub [u8; 64]);

impl TileConfig {
    pub fn new(count: usize) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..count {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = TILE as u8;
        }
        Self(c)
    }
}

/// Zeroes tile registers 0-3, where both tile kernels keep their sums.
///
/// # Safety
/// A tile configuration with those registers must be loaded.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(super) unsafe fn zero_sums() {
    std::arch::asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod tiles {
    use super::{Columns, TileConfig, KB, TILE};
    use std::arch::asm;

    /// The sums of `w`'s rows (a multiple of 16) with every row of x, into `y`. Two 16-row
    /// weight blocks meet two column groups of x at a time: each k block loads two weight
    /// and two x tiles into registers of their own for four products, so a load need not
    /// wait for the product before it to let go of its register. Past two column groups the
    /// weight blocks, streamed from memory for the first two, come from L2.
    ///
    /// `GATED`: `w`'s blocks alternate a gate's and up's, and y gets `silu(gate) ⊙ up` of
    /// each pair ([`Columns::put_gated`]), one 16-column block a pair.
    pub unsafe fn block<const GATED: bool>(
        packed: &[u32],
        groups: usize,
        m: usize,
        w: &[half::bf16],
        y: Columns,
        k: usize,
    ) {
        // Registers 0-3 the sums (2 r + g), 4-5 the x tiles, 6-7 the weight tiles.
        let cfg = TileConfig::new(8);
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        let w_blocks = w.len() / (TILE * k);
        let (mut sums, mut up) = ([0f32; TILE * TILE], [0f32; TILE * TILE]);
        for jb in (0..w_blocks).step_by(2) {
            let here = (w_blocks - jb).min(2);
            let sweep = Sweep {
                w: w.as_ptr().add(jb * TILE * k),
                rows: here * TILE,
                next_rows: (w_blocks - jb - here).min(2) * TILE,
                k,
                k_blocks: k / KB,
            };
            for set in (0..groups).step_by(2) {
                let x = packed.as_ptr().add(set * sweep.k_blocks * TILE * TILE);
                let fetch = set == 0;
                let pair = (groups - set).min(2);
                match (here, pair) {
                    (2, 2) => sweep.run::<2, 2>(x, fetch),
                    (2, _) => sweep.run::<2, 1>(x, fetch),
                    (_, 2) => sweep.run::<1, 2>(x, fetch),
                    _ => sweep.run::<1, 1>(x, fetch),
                }
                for g in 0..pair {
                    let group = set + g;
                    let cols = (m - group * TILE).min(TILE);
                    if GATED {
                        debug_assert_eq!(here, 2, "a gate block without its up block");
                        store(g, &mut sums);
                        store(2 + g, &mut up);
                        y.put_gated(&sums, &up, jb / 2 * TILE, group, cols);
                        continue;
                    }
                    for r in 0..here {
                        store(2 * r + g, &mut sums);
                        y.put(&sums, (jb + r) * TILE, group, cols);
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// One or two 16-row weight blocks and their k blocks.
    struct Sweep {
        w: *const half::bf16,
        /// Rows of these weight blocks (16 or 32).
        rows: usize,
        /// Rows of the weight blocks after these (prefetched as this sweep ends).
        next_rows: usize,
        k: usize,
        k_blocks: usize,
    }

    impl Sweep {
        /// Sums R weight blocks against G column groups of packed x (from `x`) into registers
        /// 2 r + g; with `fetch`, prefetching the weights for the first time through.
        #[inline(always)]
        unsafe fn run<const R: usize, const G: usize>(&self, x: *const u32, fetch: bool) {
            super::zero_sums();
            let group_len = self.k_blocks * TILE * TILE;
            for b in 0..self.k_blocks {
                if fetch {
                    self.prefetch(b + AHEAD);
                }
                for g in 0..G {
                    load_x(g, x.add(g * group_len + b * TILE * TILE));
                }
                for r in 0..R {
                    load_w(r, self.w.add(r * TILE * self.k + b * KB), self.k * 2);
                    for g in 0..G {
                        dot(r, g);
                    }
                }
            }
        }

        /// Prefetches k block `b` of these weight blocks into L1 (each row's 64 bytes), or,
        /// past their last k block, the matching block of the ones after.
        #[inline(always)]
        unsafe fn prefetch(&self, b: usize) {
            let (at, rows) = match b < self.k_blocks {
                true => (self.w.add(b * KB), self.rows),
                false => (
                    self.w.add(self.rows * self.k + (b - self.k_blocks) * KB),
                    self.next_rows,
                ),
            };
            for r in 0..rows {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    at.add(r * self.k) as *const i8,
                );
            }
        }
    }

    /// k blocks of weights prefetched ahead of the one multiplied. The hardware's prefetchers
    /// alone left a batch-32 decode step ~10% slower; 16 ahead was slower again.
    const AHEAD: usize = 4;

    #[inline(always)]
    unsafe fn load_x(g: usize, p: *const u32) {
        match g {
            0 => {
                asm!("tileloadd tmm4, [{p} + {s}*1]", p = in(reg) p, s = in(reg) 64usize, options(nostack, readonly))
            }
            _ => {
                asm!("tileloadd tmm5, [{p} + {s}*1]", p = in(reg) p, s = in(reg) 64usize, options(nostack, readonly))
            }
        }
    }

    #[inline(always)]
    unsafe fn load_w(r: usize, p: *const half::bf16, stride: usize) {
        match r {
            0 => {
                asm!("tileloadd tmm6, [{p} + {s}*1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly))
            }
            _ => {
                asm!("tileloadd tmm7, [{p} + {s}*1]", p = in(reg) p, s = in(reg) stride, options(nostack, readonly))
            }
        }
    }

    /// Sum register 2 r + g += weight tile r · x tile g.
    #[inline(always)]
    unsafe fn dot(r: usize, g: usize) {
        match (r, g) {
            (0, 0) => asm!("tdpbf16ps tmm0, tmm6, tmm4", options(nostack, nomem)),
            (0, _) => asm!("tdpbf16ps tmm1, tmm6, tmm5", options(nostack, nomem)),
            (_, 0) => asm!("tdpbf16ps tmm2, tmm7, tmm4", options(nostack, nomem)),
            _ => asm!("tdpbf16ps tmm3, tmm7, tmm5", options(nostack, nomem)),
        }
    }

    /// Sum register `t` (0-3) into `sums`, row-major.
    #[inline(always)]
    unsafe fn store(t: usize, sums: &mut [f32; TILE * TILE]) {
        let p = sums.as_mut_ptr();
        match t {
            0 => {
                asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) p, s = in(reg) 64usize, options(nostack))
            }
            1 => {
                asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) p, s = in(reg) 64usize, options(nostack))
            }
            2 => {
                asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) p, s = in(reg) 64usize, options(nostack))
            }
            _ => {
                asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) p, s = in(reg) 64usize, options(nostack))
            }
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod tiles {
    pub unsafe fn block<const GATED: bool>(
        _: &[u32],
        _: usize,
        _: usize,
        _: &[half::bf16],
        _: super::Columns,
        _: usize,
    ) {
        unreachable!("AMX is detected on x86_64 Linux only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bits;
    use candle_core::{DType, Device, Tensor};

    fn bf16(t: &Tensor) -> Vec<half::bf16> {
        t.to_dtype(DType::BF16)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// `t` rounded to bf16, in f32.
    fn rounded(t: &Tensor) -> Tensor {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    #[test]
    fn tiles_match_the_f32_product_of_the_rounded_operands_for_every_row_count() {
        if !supported() {
            eprintln!("skipped: this CPU or OS offers no AMX-BF16");
            return;
        }
        let dev = Device::Cpu;
        for (n, k) in [(16, 32), (48, 96), (160, 896)] {
            let w = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
            let wb = rounded(&w);
            // Past 64 rows the column groups take more than one pass over a weight block.
            for m in (1..=70).chain([130]) {
                let x = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
                let xb = rounded(&x);
                let want = xb.matmul(&wb.t().unwrap()).unwrap();
                let got = Tensor::from_vec(
                    product(&f32s(&x), m, &bf16(&w), n, k, Plus::default()),
                    (m, n),
                    &dev,
                )
                .unwrap();
                let diff = crate::kernels::max_abs_diff(&got, &want);
                assert!(diff < 1e-3 * (k as f32).sqrt(), "m={m} n={n} k={k}: {diff}");
            }
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_in_any_batch() {
        if !supported() {
            eprintln!("skipped: this CPU or OS offers no AMX-BF16");
            return;
        }
        let dev = Device::Cpu;
        for (n, k) in [(64, 128), (192, 576), (576, 1536)] {
            let w = bf16(&Tensor::randn(0f32, 1., (n, k), &dev).unwrap());
            let x = f32s(&Tensor::randn(0f32, 1., (100, k), &dev).unwrap());
            for m in [100, 64, 8, 3] {
                let all = product(&x[..m * k], m, &w, n, k, Plus::default());
                for i in 0..m {
                    let one = product(&x[i * k..(i + 1) * k], 1, &w, n, k, Plus::default());
                    assert_eq!(one, all[i * n..(i + 1) * n], "row {i} of {m}, n={n} k={k}");
                }
            }
        }
    }

    #[test]
    fn what_a_product_adds_gives_the_bits_of_adding_after() {
        if !supported() {
            eprintln!("skipped: this CPU or OS offers no AMX-BF16");
            return;
        }
        let dev = Device::Cpu;
        let (n, k) = (48, 96);
        let w = bf16(&Tensor::randn(0f32, 1., (n, k), &dev).unwrap());
        let bias = f32s(&Tensor::randn(0f32, 1., n, &dev).unwrap());
        // Past 128 rows the residual is read a piece at a time.
        for m in [1, 20, 130] {
            let x = f32s(&Tensor::randn(0f32, 1., (m, k), &dev).unwrap());
            let residual = f32s(&Tensor::randn(0f32, 1., (m, n), &dev).unwrap());
            let plus = Plus {
                bias: Some(&bias),
                residual: Some(&residual),
            };
            let mut want = product(&x, m, &w, n, k, Plus::default());
            plus.add_to(&mut want, n);
            let got = product(&x, m, &w, n, k, plus);
            assert_eq!(bits(&got), bits(&want), "m={m}");
        }
    }

    #[test]
    fn a_gated_product_gives_the_bits_of_the_product_then_its_gate() {
        if !supported() {
            eprintln!("skipped: this CPU or OS offers no AMX-BF16");
            return;
        }
        let dev = Device::Cpu;
        for (n, k) in [(32, 64), (192, 576)] {
            let w = bf16(&Tensor::randn(0f32, 1., (n, k), &dev).unwrap());
            for m in [1, 17, 32, 70] {
                let x = f32s(&Tensor::randn(0f32, 1., (m, k), &dev).unwrap());
                let want = crate::kernels::swiglu::gate_blocks(
                    &product(&x, m, &w, n, k, Plus::default()),
                    n,
                );
                let got = gated_product(&x, m, &w, n, k);
                assert_eq!(bits(&got), bits(&want), "m={m} n={n} k={k}");
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn transpose_swaps_rows_and_columns() {
        if !supported() {
            eprintln!("skipped: this CPU or OS offers no AMX-BF16");
            return;
        }
        use std::arch::x86_64::*;
        let m: Vec<u32> = (0..256).collect();
        // SAFETY: `supported` found AVX-512.
        let t = unsafe {
            let rows = std::array::from_fn(|i| _mm512_loadu_si512(m[i * 16..].as_ptr().cast()));
            pack::transpose(rows).map(|r| std::mem::transmute::<__m512i, [u32; 16]>(r))
        };
        for (i, row) in t.iter().enumerate() {
            for (j, &e) in row.iter().enumerate() {
                assert_eq!(e, m[j * 16 + i], "element ({i}, {j})");
            }
        }
    }

    #[test]
    fn takes_only_whole_tiles() {
        assert!(fits(1, 896, 4864) && fits(1000, 151_936, 896));
        assert!(!fits(0, 16, 32));
        assert!(!fits(8, 20, 32) && !fits(8, 16, 48));
    }
}
