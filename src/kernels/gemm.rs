//! Dense f32/f64 products on the CPU through the gemm crate (the one candle's matmul calls),
//! for the training ops: a new output is written whole by gemm (candle's matmul zeroes it
//! first), and a gradient is added into its accumulator inside the product (gemm's
//! `dst = dst + a · b`) instead of being built, then added.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result};
use gemm::Parallelism;

use super::bf16_gemm;

/// A strided 2-D view of a storage: element (i, j) at `offset + i * rs + j * cs`.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub rows: usize,
    pub cols: usize,
    offset: usize,
    rs: usize,
    cs: usize,
}

impl View {
    /// The view a 2-D layout describes.
    pub fn of(l: &Layout) -> Result<Self> {
        let (rows, cols) = l.shape().dims2()?;
        let &[rs, cs] = l.stride() else {
            bail!("gemm view: layout {:?} is not 2-D", l.dims());
        };
        Ok(Self {
            rows,
            cols,
            offset: l.start_offset(),
            rs,
            cs,
        })
    }

    /// The transpose, without moving data.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// The flat index of element (i, j).
    pub(crate) fn at(&self, i: usize, j: usize) -> usize {
        self.offset + i * self.rs + j * self.cs
    }

    /// Whether each row's elements are adjacent.
    pub(crate) fn contiguous_rows(&self) -> bool {
        self.cs == 1 || self.cols <= 1
    }

    /// The flat range of row `i`, for a view whose rows are contiguous.
    pub fn row(&self, i: usize) -> Result<std::ops::Range<usize>> {
        if self.cs != 1 && self.cols > 1 {
            bail!("rows of {self:?} are not contiguous");
        }
        let start = self.offset + i * self.rs;
        Ok(start..start + self.cols)
    }

    fn contiguous(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            offset: 0,
            rs: cols,
            cs: 1,
        }
    }

    /// Checks that every element lies inside a buffer of `len`.
    fn within(&self, len: usize) -> Result<()> {
        let last = match self.rows * self.cols {
            0 => 0,
            _ => self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1,
        };
        if last > len {
            bail!("gemm view {self:?} reaches past a buffer of {len}");
        }
        Ok(())
    }
}

/// How f32 products multiply: exactly, or as bf16 roundings of their operands with f32 sums
/// where the CPU multiplies bf16 pairs (AMX, AVX-512 BF16) and the product is large
/// (`bf16_gemm`). f64 products are always exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Products {
    #[default]
    F32,
    Bf16,
}

/// The dtypes these products take: gemm's unit, and for f32 the bf16 kernels.
trait Element: Copy + 'static {
    const ONE: Self;

    /// Runs the product in bf16 when `products` asks for it and the CPU and size allow it,
    /// saying whether it did.
    ///
    /// # Safety
    /// As [`run`]'s, with the views already checked.
    #[allow(clippy::too_many_arguments)]
    unsafe fn on_tiles(
        _products: Products,
        _dst: *mut Self,
        _dv: View,
        _read_dst: bool,
        _a: &[Self],
        _av: View,
        _b: &[Self],
        _bv: View,
    ) -> bool {
        false
    }
}

impl Element for f64 {
    const ONE: Self = 1.0;
}

impl Element for f32 {
    const ONE: Self = 1.0;

    unsafe fn on_tiles(
        products: Products,
        dst: *mut f32,
        dv: View,
        read_dst: bool,
        a: &[f32],
        av: View,
        b: &[f32],
        bv: View,
    ) -> bool {
        let tiles = on_tiles(products, av.rows, bv.cols, av.cols);
        if tiles {
            bf16_gemm::product(dst, dv, read_dst, a, av, b, bv);
        }
        tiles
    }
}

/// Whether an f32 product of these sizes runs on the bf16 tiles under `products`: the one
/// rule, so that a product of a packed operand ([`product_packed`]) gives the same bits.
pub fn on_tiles(products: Products, m: usize, n: usize, k: usize) -> bool {
    products == Products::Bf16 && bf16_gemm::fits(m, n, k)
}

/// `a · b` into a new contiguous (a.rows, b.cols) storage of their dtype (f32 or f64).
pub fn product(
    a: &CpuStorage,
    av: View,
    b: &CpuStorage,
    bv: View,
    products: Products,
) -> Result<CpuStorage> {
    fn new<T: Element>(a: &[T], av: View, b: &[T], bv: View, products: Products) -> Result<Vec<T>> {
        // SAFETY: with read_dst = false both kernels write every element and read none.
        unsafe {
            written(av.rows, bv.cols, |dst, dv| {
                run(dst, dv.rows * dv.cols, dv, false, a, av, b, bv, products)
            })
        }
    }
    Ok(match (a, b) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(new(a, av, b, bv, products)?),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(new(a, av, b, bv, products)?),
        _ => bail!(
            "gemm product: needs two f32 or two f64 operands, got {:?} and {:?}",
            a.dtype(),
            b.dtype()
        ),
    })
}

/// `a · b` into a new contiguous f32 storage, `b` packed beforehand as bf16 tiles: the
/// product [`product`] runs with [`Products::Bf16`] where the tiles fit, bit for bit.
pub fn product_packed(a: &CpuStorage, av: View, b: &bf16_gemm::PackedB) -> Result<CpuStorage> {
    let CpuStorage::F32(a) = a else {
        bail!("gemm product_packed: needs an f32 lhs, got {:?}", a.dtype());
    };
    let (k, n) = b.dims();
    if av.cols != k {
        bail!("gemm product_packed: cannot multiply {av:?} by packed ({k}, {n})");
    }
    if !bf16_gemm::supported() {
        bail!("gemm product_packed: this CPU multiplies no bf16 pairs");
    }
    av.within(a.len())?;
    // SAFETY: bf16 pairs are supported (checked); with read_dst = false the product writes
    // every element of its output and reads none.
    let out = unsafe {
        written(av.rows, n, |dst, dv| {
            bf16_gemm::product_packed(dst, dv, false, a, av, b);
            Ok(())
        })?
    };
    Ok(CpuStorage::F32(out))
}

/// A new contiguous (rows, cols) output, filled by `write` through a pointer and its view.
///
/// # Safety
/// `write` must write every element and read none before writing it.
unsafe fn written<T>(
    rows: usize,
    cols: usize,
    write: impl FnOnce(*mut T, View) -> Result<()>,
) -> Result<Vec<T>> {
    let len = rows * cols;
    let mut out = Vec::with_capacity(len);
    write(out.as_mut_ptr(), View::contiguous(rows, cols))?;
    // SAFETY: the capacity holds `len` elements, all written (the caller's promise).
    out.set_len(len);
    Ok(out)
}

/// `dst += a · b`, in place, all three of one dtype (f32 or f64).
pub fn add_product(
    dst: &mut CpuStorage,
    dv: View,
    a: &CpuStorage,
    av: View,
    b: &CpuStorage,
    bv: View,
    products: Products,
) -> Result<()> {
    let d = dst.dtype();
    match (dst, a, b) {
        // SAFETY: `run` checks that dv lies within d.
        (CpuStorage::F32(d), CpuStorage::F32(a), CpuStorage::F32(b)) => unsafe {
            run(d.as_mut_ptr(), d.len(), dv, true, a, av, b, bv, products)
        },
        (CpuStorage::F64(d), CpuStorage::F64(a), CpuStorage::F64(b)) => unsafe {
            run(d.as_mut_ptr(), d.len(), dv, true, a, av, b, bv, products)
        },
        _ => bail!(
            "gemm add_product: needs three f32 or three f64 tensors, got {d:?}, {:?}, {:?}",
            a.dtype(),
            b.dtype()
        ),
    }
}

/// `dst = (read_dst ? dst : 0) + a · b` through gemm, or in bf16 where `products` asks for it
/// and the CPU, dtype and size allow it, with the shapes and bounds checked.
///
/// # Safety
/// `dst` must be valid for writes of `dst_len` elements (and reads of them with `read_dst`).
#[allow(clippy::too_many_arguments)]
unsafe fn run<T: Element>(
    dst: *mut T,
    dst_len: usize,
    dv: View,
    read_dst: bool,
    a: &[T],
    av: View,
    b: &[T],
    bv: View,
    products: Products,
) -> Result<()> {
    if av.cols != bv.rows || dv.rows != av.rows || dv.cols != bv.cols {
        bail!("gemm: cannot multiply {av:?} by {bv:?} into {dv:?}");
    }
    dv.within(dst_len)?;
    av.within(a.len())?;
    bv.within(b.len())?;
    if T::on_tiles(products, dst, dv, read_dst, a, av, b, bv) {
        return Ok(());
    }
    let threads = candle_core::utils::get_num_threads();
    let parallelism = match threads {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    };
    let at = |v: View| v.offset;
    // gemm computes dst = alpha * dst + beta * a · b; alpha is read only with read_dst.
    gemm::gemm(
        av.rows,
        bv.cols,
        av.cols,
        dst.add(at(dv)),
        dv.cs as isize,
        dv.rs as isize,
        read_dst,
        a.as_ptr().add(at(av)),
        av.cs as isize,
        av.rs as isize,
        b.as_ptr().add(at(bv)),
        bv.cs as isize,
        bv.rs as isize,
        T::ONE,
        T::ONE,
        false,
        false,
        false,
        parallelism,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn storage(t: &Tensor) -> (CpuStorage, View) {
        let (s, l) = t.storage_and_layout();
        match &*s {
            candle_core::Storage::Cpu(s) => (s.clone(), View::of(l).unwrap()),
            _ => unreachable!("CPU tensors only"),
        }
    }

    #[test]
    fn products_of_strided_views_match_candle() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f64, 1., (7, 5), &dev).unwrap();
        let b = Tensor::randn(0f64, 1., (3, 5), &dev).unwrap();
        // a · bᵀ with bᵀ a strided view, and a narrowed (offset) lhs.
        let (sa, va) = storage(&a.narrow(0, 2, 5).unwrap());
        let (sb, vb) = storage(&b);
        let got = product(&sa, va, &sb, vb.t(), Products::F32).unwrap();
        let want = a.narrow(0, 2, 5).unwrap().matmul(&b.t().unwrap()).unwrap();
        let got = Tensor::from_vec(got.as_slice::<f64>().unwrap().to_vec(), (5, 3), &dev).unwrap();
        assert!(crate::kernels::max_abs_diff(&got, &want) < 1e-12);

        // dst (3, 5) += bᵀ... as a weight gradient: gᵀ (3, 7) · a (7, 5).
        let g = Tensor::randn(0f64, 1., (7, 3), &dev).unwrap();
        let start = Tensor::randn(0f64, 1., (3, 5), &dev).unwrap();
        let (mut sd, vd) = storage(&start);
        let (sg, vg) = storage(&g);
        let (sa, va) = storage(&a);
        add_product(&mut sd, vd, &sg, vg.t(), &sa, va, Products::F32).unwrap();
        let want = (&start + g.t().unwrap().matmul(&a).unwrap()).unwrap();
        let got = Tensor::from_vec(sd.as_slice::<f64>().unwrap().to_vec(), (3, 5), &dev).unwrap();
        assert!(crate::kernels::max_abs_diff(&got, &want) < 1e-12);
    }

    #[test]
    fn mismatched_shapes_and_dtypes_are_errors() {
        let dev = Device::Cpu;
        let (a, va) = storage(&Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap());
        let (b, vb) = storage(&Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap());
        assert!(product(&a, va, &b, vb, Products::F32).is_err());
        let (c, vc) = storage(&Tensor::zeros((3, 2), candle_core::DType::F64, &dev).unwrap());
        assert!(product(&a, va, &c, vc, Products::Bf16).is_err());
    }
}
