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
//! rows are, so a row's bits still do not depend on its batch. Past 64 rows the column groups
//! go four at a time, each weight block read from memory once and from L2 after.
//!
//! Linux hands the tile registers to a process only on request (`arch_prctl`), made once in
//! [`supported`]. Stable Rust has no AMX intrinsics; the five instructions are inline asm.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Columns, Out};

/// Rows of `w` and columns of `x` per tile.
pub(super) const TILE: usize = 16;
/// k-values per tile: 16 rows of 64 bytes of bf16.
pub(super) const KB: usize = 32;
/// Column groups of `x` multiplied at a time (tile registers 0..4 hold their sums).
const GROUPS: usize = 4;
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
pub fn product(x: &[f32], m: usize, w: &[half::bf16], n: usize, k: usize) -> Vec<f32> {
    assert!(supported() && fits(m, n, k) && x.len() == m * k && w.len() == n * k);
    let packed = pack(x, m, k);
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let rows = (n / TILE).div_ceil(rayon::current_num_threads() * 4) * TILE;
    // A prompt pass's rows go in pieces whose packed tiles stay in L2 (the weights are
    // streamed once a piece): with all of a long prompt's rows at once, every weight block
    // re-read megabytes of x from memory.
    let piece_len = PIECE / TILE * (k / KB) * TILE * TILE;
    for (p, packed) in packed.chunks(piece_len).enumerate() {
        let m = (m - p * PIECE).min(PIECE);
        // SAFETY: this piece's rows of y lie within the capacity.
        let out = Out(unsafe { y.as_mut_ptr().add(p * PIECE * n) });
        w.par_chunks(rows * k).enumerate().for_each(|(t, w)| {
            let y = Columns {
                y: out.get(),
                n,
                first: t * rows,
            };
            // SAFETY: `supported` checked the CPU and got the OS's leave; `w` holds whole
            // 16-row blocks, whose columns of y (from `first`) only this task writes, and
            // `packed` holds the piece's column groups.
            unsafe { tiles::block(packed, m.div_ceil(TILE), m, w, y, k) }
        });
    }
    // SAFETY: the pieces cover all m rows, and each piece's tasks all n columns.
    unsafe { y.set_len(m * n) };
    y
}

impl Columns {
    /// Writes the tile `sums` (16 rows of w by 16 rows of x, x rows `group * 16..` of which
    /// `cols` are real) for w rows `row..row + 16` of this task: each x row's 16 sums are
    /// one contiguous run of y.
    ///
    /// Column c of the tile is gathered into one register and stored whole (element by
    /// element, the 256 moves a tile were ~4% of a batch-32 decode step).
    ///
    /// # Safety
    /// The rows and columns must lie in y and belong to this task, on a CPU with AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn put(&self, sums: &[f32; TILE * TILE], row: usize, group: usize, cols: usize) {
        use std::arch::x86_64::*;
        let down = pack::down_a_column();
        for c in 0..cols {
            let column = _mm512_i32gather_ps::<4>(down, sums.as_ptr().add(c));
            _mm512_storeu_ps(self.at(group * TILE + c, row), column);
        }
    }
}

/// `x` rounded to bf16 and laid out as B tiles: for column group g and k block b, 16 rows (k
/// pairs) of 16 columns (rows of `x`), each a pair of adjacent bf16 k-values read as one u32;
/// zeros after the last row. A prompt pass's column groups are packed in parallel; a decode
/// step's few in place, where waking the other thread cost more than packing.
fn pack(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let group_len = k / KB * TILE * TILE;
    let mut packed = vec![0u32; m.div_ceil(TILE) * group_len];
    // SAFETY: the caller checked AVX-512 BF16; each call gets whole rows of x and its own
    // group of `packed`.
    let group = |(dst, rows): (&mut [u32], &[f32])| unsafe { pack::group(rows, k, dst) };
    match m <= GROUPS * TILE {
        true => packed
            .chunks_mut(group_len)
            .zip(x.chunks(TILE * k))
            .for_each(group),
        false => packed
            .par_chunks_mut(group_len)
            .zip(x.par_chunks(TILE * k))
            .for_each(group),
    }
    packed
}

#[cfg(target_arch = "x86_64")]
mod pack {
    use super::{KB, TILE};
    use std::arch::x86_64::*;

    /// One column group: up to 16 rows of x, each k block's 32 values rounded into 16 pairs
    /// (`vcvtne2ps2bf16`, the rounding of [`crate::kernels::matvec::round_bf16`]) and
    /// scattered down the group's column of that block's tile.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn group(rows: &[f32], k: usize, dst: &mut [u32]) {
        let down = down_a_column();
        for (c, row) in rows.chunks_exact(k).enumerate() {
            for (b, v) in row.chunks_exact(KB).enumerate() {
                let lo = _mm512_loadu_ps(v.as_ptr());
                let hi = _mm512_loadu_ps(v.as_ptr().add(16));
                let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                let at = dst.as_mut_ptr().add(b * TILE * TILE + c);
                _mm512_i32scatter_epi32::<4>(at as *mut _, down, pairs);
            }
        }
    }

    /// Element offsets of one column of a 16 x 16 tile of 4-byte elements: 0, 16, .., 240,
    /// for gathering or scattering a column in one instruction.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn down_a_column() -> __m512i {
        _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(TILE as i32),
        )
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod pack {
    pub unsafe fn group(_: &[f32], _: usize, _: &mut [u32]) {
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
    use super::{Columns, TileConfig, GROUPS, KB, TILE};
    use std::arch::asm;

    /// The sums of `w`'s rows (a multiple of 16) with every row of x, into `y`: each 16-row
    /// weight block is streamed once, k block by k block, against every column group of x.
    pub unsafe fn block(
        packed: &[u32],
        groups: usize,
        m: usize,
        w: &[half::bf16],
        y: Columns,
        k: usize,
    ) {
        // Registers 0-3 the sums of the column groups, 4 a weight tile, 5 an x tile.
        let cfg = TileConfig::new(6);
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        let blocks = k / KB;
        let w_stride = k * 2;
        let mut sums = [0f32; TILE * TILE];
        for jb in 0..w.len() / (TILE * k) {
            let wp = w.as_ptr().add(jb * TILE * k);
            // Four column groups at a time (one sum register each); the weight block, read
            // from memory for the first four, comes from L2 for the rest.
            for set in (0..groups).step_by(GROUPS) {
                let here = (groups - set).min(GROUPS);
                super::zero_sums();
                for b in 0..blocks {
                    if set == 0 {
                        prefetch(wp, b + AHEAD, blocks, k, jb + 1 < w.len() / (TILE * k));
                    }
                    asm!("tileloadd tmm4, [{p} + {s}*1]", p = in(reg) wp.add(b * KB),
                        s = in(reg) w_stride, options(nostack, readonly));
                    for g in 0..here {
                        let xp = packed.as_ptr().add(((set + g) * blocks + b) * TILE * TILE);
                        asm!("tileloadd tmm5, [{p} + {s}*1]", p = in(reg) xp, s = in(reg) 64usize,
                            options(nostack, readonly));
                        match g {
                            0 => asm!("tdpbf16ps tmm0, tmm4, tmm5", options(nostack, nomem)),
                            1 => asm!("tdpbf16ps tmm1, tmm4, tmm5", options(nostack, nomem)),
                            2 => asm!("tdpbf16ps tmm2, tmm4, tmm5", options(nostack, nomem)),
                            _ => asm!("tdpbf16ps tmm3, tmm4, tmm5", options(nostack, nomem)),
                        }
                    }
                }
                for g in 0..here {
                    let p = sums.as_mut_ptr();
                    match g {
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
                    let group = set + g;
                    y.put(&sums, jb * TILE, group, (m - group * TILE).min(TILE));
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// k blocks of weights prefetched ahead of the one multiplied. The hardware's prefetchers
    /// alone left a batch-32 decode step ~10% slower; 16 ahead was slower again.
    const AHEAD: usize = 4;

    /// Prefetches weight tile `b` of the block at `wp` into L1 (its 16 rows' 64 bytes), or,
    /// past the block's last k block, the matching tile of the next block when there is one.
    #[inline(always)]
    unsafe fn prefetch(wp: *const half::bf16, b: usize, blocks: usize, k: usize, next: bool) {
        let at = match b < blocks {
            true => wp.add(b * KB),
            false if next => wp.add(TILE * k + (b - blocks) * KB),
            false => return,
        };
        for r in 0..TILE {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                at.add(r * k) as *const i8
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod tiles {
    pub unsafe fn block(
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
                let got =
                    Tensor::from_vec(product(&f32s(&x), m, &bf16(&w), n, k), (m, n), &dev).unwrap();
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
                let all = product(&x[..m * k], m, &w, n, k);
                for i in 0..m {
                    let one = product(&x[i * k..(i + 1) * k], 1, &w, n, k);
                    assert_eq!(one, all[i * n..(i + 1) * n], "row {i} of {m}, n={n} k={k}");
                }
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
