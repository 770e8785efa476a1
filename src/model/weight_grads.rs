//! Gradient accumulators for a model's matrices (every linear weight, the embedding and the LM
//! head), torch's `.grad` for them: a training pass given [`WeightGrads`] adds each matrix's
//! gradient into its accumulator inside the backward product (gemm with `dst += gᵀ · x`), and
//! backward returns none for it.
//!
//! Through candle's backward each matrix's gradient of each micro-batch is a new tensor that
//! `GradStore` adds to a zeroed one of its size, and the update then adds it to the running
//! sum: three weight-sized allocations and passes over memory per matrix and micro-batch (the
//! embedding's and LM head's fresh from the kernel, page by page), plus a strided add for
//! every transposed weight. CPU f32/f64 only: elsewhere (CUDA, bf16) no accumulators are
//! made and candle's ops run as before.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use candle_core::backprop::GradStore;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp2, InplaceOp3, Layout,
    Result, Shape, Tensor, TensorId, Var,
};

use super::ops::Precomputed;
use crate::kernels::bf16_gemm::PackedB;
pub use crate::kernels::gemm::Products;
use crate::kernels::gemm::{add_product, on_tiles, product, product_packed, View};
use crate::kernels::swiglu::{self, swiglu};

/// One zeroed accumulator per matrix parameter, keyed by the parameter, and how the products
/// of the pass multiply.
pub struct WeightGrads {
    sinks: HashMap<TensorId, Tensor>,
    products: Products,
    /// The LM head as tiles, for the products of the head's sink while the weights stay.
    head_tiles: Arc<HeadTiles>,
}

/// Where one matrix's gradient goes, and how the products around it multiply.
#[derive(Clone, Copy)]
pub struct Sink<'a> {
    grad: &'a Tensor,
    products: Products,
    head_tiles: &'a Arc<HeadTiles>,
}

impl WeightGrads {
    /// Accumulators for the rank-2 parameters among `params`, or None when they cannot take
    /// gradients in place (not on the CPU, or neither f32 nor f64). The pass's matrix products
    /// (forward, input and weight gradients) multiply as `products` says.
    pub fn new(params: &[&Var], products: Products) -> Result<Option<Self>> {
        let mut sinks = HashMap::new();
        for p in params.iter().filter(|p| p.rank() == 2) {
            if !p.device().is_cpu() || !matches!(p.dtype(), DType::F32 | DType::F64) {
                return Ok(None);
            }
            sinks.insert(p.id(), resident_zeros(p, p.dtype())?);
        }
        Ok(Some(Self {
            sinks,
            products,
            head_tiles: Default::default(),
        }))
    }

    /// These accumulators zeroed for another update under `products`: an update that keeps
    /// them from the last one spares the allocation and page faults of 2.5 GB (Qwen2.5-0.5B).
    pub fn reset(self, products: Products) -> Result<Self> {
        for sink in self.sinks.values() {
            sink.zero_set()?;
        }
        Ok(Self {
            products,
            ..self.without_packs()
        })
    }

    /// These accumulators without the weights packed from the last pass: call it once the
    /// weights change (the optimizer's step) or before they wait idle (0.5 GB for Qwen's head).
    pub fn without_packs(self) -> Self {
        Self {
            head_tiles: Default::default(),
            ..self
        }
    }

    /// The accumulator of `weight`, if it has one.
    pub(super) fn sink(&self, weight: &Tensor) -> Option<Sink<'_>> {
        self.sinks.get(&weight.id()).map(|grad| Sink {
            grad,
            products: self.products,
            head_tiles: &self.head_tiles,
        })
    }

    /// Adds what was accumulated into `grads`, the rest of the parameters' gradients. Where a
    /// parameter has no other gradient, `grads` shares the accumulator's memory: drop `grads`
    /// before the next [`reset`](Self::reset).
    pub fn add_to(&self, grads: &mut GradStore) -> Result<()> {
        for (&id, sink) in &self.sinks {
            let sum = match grads.get_id(id) {
                Some(g) => (g + sink)?,
                None => sink.clone(),
            };
            grads.insert_id(id, sum);
        }
        Ok(())
    }
}

/// Zeros shaped like `like`, in `dtype`, written to memory now on the CPU. Fresh zeros are
/// calloc'd pages that the kernel maps to its shared zero page until written; a buffer read
/// before its first write (an accumulator, an optimizer's moment) then takes a copy-on-write
/// fault a page, each with a TLB shootdown of every thread (13% of an update on a 2-core VM).
pub fn resident_zeros(like: &Tensor, dtype: DType) -> Result<Tensor> {
    let zeros = Tensor::zeros(like.shape(), dtype, like.device())?;
    if zeros.device().is_cpu() {
        zeros.zero_set()?;
    }
    Ok(zeros)
}

/// `x (m, k) · w (n, k)ᵀ` whose backward adds `dyᵀ · x` into `sink` and returns only dx.
pub fn project(x: &Tensor, w: &Tensor, sink: Sink) -> Result<Tensor> {
    x.apply_op2(
        w,
        Projection {
            sink: sink.grad.clone(),
            products: sink.products,
        },
    )
}

/// `rows (n, h) · head (v, h)ᵀ` with no backward, multiplied as `sink`'s pass multiplies.
pub fn logits(rows: &Tensor, head: &Tensor, sink: Sink) -> Result<Tensor> {
    sink.head_tiles
        .product(rows, head, Side::Transposed, sink.products)
}

/// The LM head packed as bf16 tiles on first use, shared by the chunks of every pass of an
/// update (forward and backward): the head is 136 M values in Qwen2.5-0.5B, and packed anew
/// for each of a chunk's three products it took as long as they did. Holds nothing unless
/// the passes multiply in bf16 on a CPU that can. Valid while the weights stay: see
/// [`WeightGrads::without_packs`].
#[derive(Default)]
struct HeadTiles {
    /// headᵀ (h, v): the logits, `rows · headᵀ`.
    transposed: OnceLock<PackedB>,
    /// head (v, h): the rows' gradient, `c · head`.
    plain: OnceLock<PackedB>,
}

/// Which way a product takes the head.
#[derive(Clone, Copy)]
enum Side {
    Transposed,
    Plain,
}

impl HeadTiles {
    /// `a · headᵀ` or `a · head`, bit for bit what [`plain_product`] gives under `products`.
    fn product(&self, a: &Tensor, head: &Tensor, side: Side, products: Products) -> Result<Tensor> {
        let b = match side {
            Side::Transposed => head.t()?,
            Side::Plain => head.clone(),
        };
        let (k, n) = b.dims2()?;
        let tiles = [a.dtype(), b.dtype()] == [DType::F32; 2]
            && a.device().is_cpu()
            && on_tiles(products, a.dim(0)?, n, k);
        if !tiles {
            return plain_product(a, &b, products);
        }
        let cell = match side {
            Side::Transposed => &self.transposed,
            Side::Plain => &self.plain,
        };
        if cell.get().is_none() {
            let (storage, layout) = b.storage_and_layout();
            let candle_core::Storage::Cpu(CpuStorage::F32(values)) = &*storage else {
                bail!("azr-head-tiles: the head is not f32 on the CPU");
            };
            let packed = PackedB::new(values, View::of(layout)?);
            // Another thread may have packed it meanwhile: the same tiles either way.
            let _ = cell.set(packed);
        }
        let packed = cell.get().expect("packed just above");
        a.apply_op1_no_bwd(&PackedProduct(packed))
    }
}

/// `a · b` with `b` packed beforehand.
struct PackedProduct<'a>(&'a PackedB);

impl CustomOp1 for PackedProduct<'_> {
    fn name(&self) -> &'static str {
        "azr-packed-product"
    }

    fn cpu_fwd(&self, a: &CpuStorage, al: &Layout) -> Result<(CpuStorage, Shape)> {
        let av = View::of(al)?;
        let out = product_packed(a, av, self.0)?;
        Ok((out, Shape::from((av.rows, self.0.dims().1))))
    }
}

/// `a · b` with no backward (gemm without zeroing the output first).
fn plain_product(a: &Tensor, b: &Tensor, products: Products) -> Result<Tensor> {
    a.apply_op2_no_bwd(b, &Product(products))
}

struct Product(Products);

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "azr-product"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (av, bv) = (View::of(al)?, View::of(bl)?);
        Ok((
            product(a, av, b, bv, self.0)?,
            Shape::from((av.rows, bv.cols)),
        ))
    }
}

struct Projection {
    sink: Tensor,
    products: Products,
}

impl CustomOp2 for Projection {
    fn name(&self) -> &'static str {
        "azr-projection"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xv, wv) = (View::of(xl)?, View::of(wl)?.t());
        Ok((
            product(x, xv, w, wv, self.products)?,
            Shape::from((xv.rows, wv.cols)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.backward(x, w, dy)?), None))
    }
}

impl Projection {
    /// Adds the weight's gradient into the sink and returns dx.
    fn backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let dy = dy.contiguous()?;
        self.sink
            .inplace_op3(&dy, &x.detach(), &AddWeightGrad(self.products))?;
        plain_product(&dy, &w.detach(), self.products)
    }
}

/// `x (m, k) · w (n, k)ᵀ + plus`, plus a bias (n,) or a residual (m, n), as one op: composed,
/// the graph would keep the bare product (m, n) beside the sum. Its backward is
/// [`project`]'s, and `plus` takes the output's gradient (summed over rows for a bias).
pub fn project_plus(x: &Tensor, w: &Tensor, plus: &Tensor, sink: Sink) -> Result<Tensor> {
    let out = plain_product(&x.detach(), &w.detach().t()?, sink.products)?
        .broadcast_add(&plus.detach())?;
    x.apply_op3(
        w,
        plus,
        ProjectionPlus {
            projection: Projection {
                sink: sink.grad.clone(),
                products: sink.products,
            },
            out: Precomputed::new(out),
        },
    )
}

struct ProjectionPlus {
    projection: Projection,
    out: Precomputed,
}

impl CustomOp3 for ProjectionPlus {
    fn name(&self) -> &'static str {
        "azr-projection-plus"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        plus: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d_plus = match plus.rank() {
            1 => dy.sum(0)?,
            _ => dy.clone(),
        };
        let dx = self.projection.backward(x, w, dy)?;
        Ok((Some(dx), None, Some(d_plus)))
    }
}

/// `(silu(gate) ⊙ up) · w (n, f)ᵀ` for gate and up (m, f), the MLP's gated projection, whose
/// backward adds the weight's gradient into `sink` and recomputes `silu(gate) ⊙ up` rather
/// than keep it: the graph holds gate and up for the gate's own gradient anyway, and the
/// product's input is another (m, f), a fifth of what a training pass of Qwen2.5-0.5B keeps
/// per position.
pub fn project_gated(gate: &Tensor, up: &Tensor, w: &Tensor, sink: Sink) -> Result<Tensor> {
    let gated = swiglu(&gate.detach(), &up.detach(), false)?;
    let out = plain_product(&gated, &w.detach().t()?, sink.products)?;
    gate.apply_op3(
        up,
        w,
        GatedProjection {
            sink: sink.grad.clone(),
            products: sink.products,
            out: Precomputed::new(out),
        },
    )
}

struct GatedProjection {
    sink: Tensor,
    products: Products,
    out: Precomputed,
}

impl CustomOp3 for GatedProjection {
    fn name(&self) -> &'static str {
        "azr-gated-projection"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        w: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gate, up, dy) = (gate.detach(), up.detach(), dy.contiguous()?);
        let gated = swiglu(&gate, &up, false)?;
        self.sink
            .inplace_op3(&dy, &gated, &AddWeightGrad(self.products))?;
        drop(gated);
        let d_gated = plain_product(&dy, &w.detach(), self.products)?;
        let (d_gate, d_up) = swiglu::gradients_of(&gate, &up, &d_gated)?;
        Ok((Some(d_gate), Some(d_up), None))
    }
}

/// `dst (n, k) += gᵀ · x` for g (m, n) and x (m, k): a weight's gradient, accumulated.
struct AddWeightGrad(Products);

impl InplaceOp3 for AddWeightGrad {
    fn name(&self) -> &'static str {
        "azr-add-weight-grad"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
        x: &CpuStorage,
        xl: &Layout,
    ) -> Result<()> {
        let (dv, gv, xv) = (View::of(dl)?, View::of(gl)?.t(), View::of(xl)?);
        add_product(dst, dv, g, gv, x, xv, self.0)
    }
}

/// Rows `ids` of `table` (v, h) -> (ids.len(), h), whose backward adds each gradient row into
/// row `ids[i]` of `sink`.
pub fn lookup(table: &Tensor, ids: &[u32], sink: Sink) -> Result<Tensor> {
    table.apply_op1(Lookup {
        ids: ids.to_vec(),
        sink: sink.grad.clone(),
    })
}

struct Lookup {
    ids: Vec<u32>,
    sink: Tensor,
}

impl CustomOp1 for Lookup {
    fn name(&self) -> &'static str {
        "azr-lookup"
    }

    fn cpu_fwd(&self, table: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn gather<T: Copy>(table: &[T], v: View, ids: &[u32]) -> Result<Vec<T>> {
            let mut out = Vec::with_capacity(ids.len() * v.cols);
            for &id in ids {
                let Some(row) = table.get(v.row(id as usize)?) else {
                    bail!("azr-lookup: token {id} is outside the table");
                };
                out.extend_from_slice(row);
            }
            Ok(out)
        }
        let v = View::of(l)?;
        let shape = Shape::from((self.ids.len(), v.cols));
        Ok(match table {
            CpuStorage::F32(t) => (CpuStorage::F32(gather(t, v, &self.ids)?), shape),
            CpuStorage::F64(t) => (CpuStorage::F64(gather(t, v, &self.ids)?), shape),
            _ => bail!("azr-lookup: needs an f32 or f64 table"),
        })
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        self.sink.inplace_op2(
            &g.contiguous()?,
            &AddRows {
                ids: self.ids.clone(),
            },
        )?;
        Ok(None)
    }
}

/// `dst[ids[i]] += src[i]` for every row i of src.
struct AddRows {
    ids: Vec<u32>,
}

impl InplaceOp2 for AddRows {
    fn name(&self) -> &'static str {
        "azr-add-rows"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> Result<()> {
        fn add<T: Copy + std::ops::AddAssign>(
            dst: &mut [T],
            dv: View,
            src: &[T],
            sv: View,
            ids: &[u32],
        ) -> Result<()> {
            if sv.rows != ids.len() || sv.cols != dv.cols {
                bail!(
                    "azr-add-rows: {sv:?} does not match {} rows of {dv:?}",
                    ids.len()
                );
            }
            for (i, &id) in ids.iter().enumerate() {
                let (to, from) = (dv.row(id as usize)?, sv.row(i)?);
                let (Some(to), Some(from)) = (dst.get_mut(to), src.get(from)) else {
                    bail!("azr-add-rows: row {id} is outside the table");
                };
                to.iter_mut().zip(from).for_each(|(d, s)| *d += *s);
            }
            Ok(())
        }
        let (dv, sv) = (View::of(dl)?, View::of(sl)?);
        match (dst, src) {
            (CpuStorage::F32(d), CpuStorage::F32(s)) => add(d, dv, s, sv, &self.ids),
            (CpuStorage::F64(d), CpuStorage::F64(s)) => add(d, dv, s, sv, &self.ids),
            _ => bail!("azr-add-rows: needs two f32 or two f64 tensors"),
        }
    }
}

/// The coefficients c (n, v) of a [`head_surrogate`].
pub enum Coefficients {
    /// Given, and held until backward.
    Held(Tensor),
    /// (onehot(target) - p) / t, p = softmax(rows · headᵀ / t), recomputed in backward from
    /// the rows and the head (one more head product per chunk): an (n, v) tensor held from
    /// forward to backward is 0.6 MB a position with Qwen's vocabulary, ~0.9 GB of a
    /// 1,500-position pass.
    LogProbs { targets: Vec<u32>, t: f64 },
}

/// A zero-valued (n,) term for rows (n, h) and the LM head (v, h) whose gradient is that of
/// `sum(rows ⊙ (c · head))` with c (n, v) held constant: d rows = c · head, and cᵀ · rows is
/// added into `sink` (the log-probs' gradient surrogate, `logprobs.rs`).
pub fn head_surrogate(rows: &Tensor, head: &Tensor, c: Coefficients, sink: Sink) -> Result<Tensor> {
    rows.apply_op2(
        head,
        HeadSurrogate {
            c,
            sink: sink.grad.clone(),
            products: sink.products,
            tiles: sink.head_tiles.clone(),
        },
    )
}

struct HeadSurrogate {
    c: Coefficients,
    sink: Tensor,
    products: Products,
    tiles: Arc<HeadTiles>,
}

impl HeadSurrogate {
    /// The coefficients times each row's output gradient `g` (n,).
    fn scaled_coefficients(&self, rows: &Tensor, head: &Tensor, g: &Tensor) -> Result<Tensor> {
        let (targets, t) = match &self.c {
            Coefficients::Held(c) => return c.broadcast_mul(&g.unsqueeze(1)?),
            Coefficients::LogProbs { targets, t } => (targets, *t),
        };
        // The forward's product on the same operands: the same logits, bit for bit.
        let logits = self
            .tiles
            .product(rows, head, Side::Transposed, self.products)?;
        crate::kernels::softmax::scaled_coefficients_in_place(&logits, targets, t, g)?;
        Ok(logits)
    }
}

impl CustomOp2 for HeadSurrogate {
    fn name(&self) -> &'static str {
        "azr-head-surrogate"
    }

    fn cpu_fwd(
        &self,
        rows: &CpuStorage,
        l: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = l.dims()[0];
        let zeros = match rows {
            CpuStorage::F32(_) => CpuStorage::F32(vec![0.0; n]),
            CpuStorage::F64(_) => CpuStorage::F64(vec![0.0; n]),
            _ => bail!("azr-head-surrogate: needs f32 or f64 rows"),
        };
        Ok((zeros, Shape::from(n)))
    }

    fn bwd(
        &self,
        rows: &Tensor,
        head: &Tensor,
        _: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, head) = (rows.detach(), head.detach());
        let gc = self.scaled_coefficients(&rows, &head, g)?;
        self.sink
            .inplace_op3(&gc, &rows, &AddWeightGrad(self.products))?;
        let d_rows = self.tiles.product(&gc, &head, Side::Plain, self.products)?;
        Ok((Some(d_rows), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Backward from a sum of `y`'s elements weighted by sin(0), sin(1), ...: every element
    /// gets its own output gradient.
    fn weighted_sum_backward(y: &Tensor) -> candle_core::backprop::GradStore {
        let weights = Tensor::arange(0f32, y.elem_count() as f32, y.device())
            .unwrap()
            .sin()
            .unwrap()
            .reshape(y.shape())
            .unwrap();
        (y * weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    /// A projection's output, input gradient and weight gradient under `products`.
    fn projected(x: &Var, w: &Var, products: Products) -> (Tensor, Tensor, Tensor) {
        let grads = WeightGrads::new(&[w], products).unwrap().unwrap();
        let y = project(x.as_tensor(), w.as_tensor(), grads.sink(w).unwrap()).unwrap();
        let store = weighted_sum_backward(&y);
        let dx = store.get(x).unwrap().clone();
        (y, dx, grads.sinks[&w.id()].clone())
    }

    #[test]
    fn bf16_tile_products_stay_within_bf16_rounding_of_f32_both_ways() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (128, 256), &dev).unwrap();
        let w = Var::randn(0f32, 0.1, (192, 256), &dev).unwrap();
        let exact = projected(&x, &w, Products::F32);
        let tiled = projected(&x, &w, Products::Bf16);
        let on_tiles = crate::kernels::bf16_gemm::fits(128, 192, 256);
        for (name, e, t) in [
            ("y", &exact.0, &tiled.0),
            ("dx", &exact.1, &tiled.1),
            ("dw", &exact.2, &tiled.2),
        ] {
            let scale = e
                .abs()
                .unwrap()
                .max_keepdim(0)
                .unwrap()
                .max(1)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0];
            let diff = crate::kernels::max_abs_diff(e, t) / scale;
            // bf16 keeps 8 significant bits: a sum of products drifts by about 2^-8 at most.
            assert!(diff < 1e-2, "{name}: {diff}");
            // On AMX the roundings show; elsewhere the request falls back to exact f32.
            assert_eq!(diff > 0.0, on_tiles, "{name}");
        }
    }

    #[test]
    fn the_packed_head_serves_every_product_until_the_weights_change() {
        let dev = Device::Cpu;
        // Large enough for the tiles: 16 x 512 x 256 multiply-adds.
        let head = Var::randn(0f32, 0.1, (512, 256), &dev).unwrap();
        let rows = Tensor::randn(0f32, 1., (16, 256), &dev).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let plain =
            |h: &Tensor| flat(&plain_product(&rows, &h.t().unwrap(), Products::Bf16).unwrap());
        let grads = WeightGrads::new(&[&head], Products::Bf16).unwrap().unwrap();
        let logits_now = |grads: &WeightGrads| {
            flat(&logits(&rows, head.as_tensor(), grads.sink(&head).unwrap()).unwrap())
        };
        let before = plain(head.as_tensor());
        assert_eq!(logits_now(&grads), before);
        // Packed once, the tiles answer again (the same bits) ...
        assert_eq!(logits_now(&grads), before);
        // ... and the head's new values once the packs are dropped.
        head.set(&(head.as_tensor() * 2.0).unwrap()).unwrap();
        let grads = grads.without_packs();
        let after = plain(head.as_tensor());
        assert_ne!(after, before);
        assert_eq!(logits_now(&grads), after);
        // A reset for the next update drops them too.
        head.set(&(head.as_tensor() * 0.5).unwrap()).unwrap();
        let grads = grads.reset(Products::Bf16).unwrap();
        assert_eq!(logits_now(&grads), before);
    }

    /// Runs `op(sink, fused)` fused and composed through one weighted sum's backward and asserts
    /// that the output, the gradients of `inputs` and w's accumulated gradient are equal bit for
    /// bit (and not all zero).
    fn assert_fused_is_composed(
        w: &Var,
        inputs: [(&str, &Var); 2],
        products: Products,
        op: impl Fn(Sink<'_>, bool) -> Tensor,
    ) {
        let run = |fused: bool| {
            let grads = WeightGrads::new(&[w], products).unwrap().unwrap();
            let y = op(grads.sink(w).unwrap(), fused);
            let store = weighted_sum_backward(&y);
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut out = vec![("y", flat(&y))];
            out.extend(inputs.map(|(name, v)| (name, flat(store.get(v).unwrap()))));
            out.push(("d w", flat(&grads.sinks[&w.id()])));
            out
        };
        for ((name, f), (_, c)) in run(true).into_iter().zip(run(false)) {
            assert!(c.iter().any(|&v| v != 0.0), "{name}: all zero");
            assert_eq!(f, c, "{name} ({products:?})");
        }
    }

    #[test]
    fn the_gated_projection_is_swiglu_then_the_projection_bit_for_bit() {
        let dev = Device::Cpu;
        for products in [Products::F32, Products::Bf16] {
            let gate = Var::randn(0f32, 2., (40, 96), &dev).unwrap();
            let up = Var::randn(0f32, 1., (40, 96), &dev).unwrap();
            let w = Var::randn(0f32, 0.1, (24, 96), &dev).unwrap();
            let inputs = [("d gate", &gate), ("d up", &up)];
            assert_fused_is_composed(&w, inputs, products, |sink, fused| match fused {
                true => project_gated(&gate, &up, &w, sink).unwrap(),
                false => project(&swiglu(&gate, &up, true).unwrap(), &w, sink).unwrap(),
            });
        }
    }

    #[test]
    fn a_projection_plus_a_bias_or_a_residual_is_the_composed_sum_bit_for_bit() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1., (40, 96), &dev).unwrap();
        let w = Var::randn(0f32, 0.1, (24, 96), &dev).unwrap();
        let bias = Var::randn(0f32, 1., 24, &dev).unwrap();
        let residual = Var::randn(0f32, 1., (40, 24), &dev).unwrap();
        for products in [Products::F32, Products::Bf16] {
            for (name, plus) in [("d bias", &bias), ("d residual", &residual)] {
                let inputs = [("d x", &x), (name, plus)];
                assert_fused_is_composed(&w, inputs, products, |sink, fused| match fused {
                    true => project_plus(&x, &w, plus, sink).unwrap(),
                    false => project(&x, &w, sink).unwrap().broadcast_add(plus).unwrap(),
                });
            }
        }
    }
}
