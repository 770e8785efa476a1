//! AdamW's per-parameter arithmetic as in-place CPU kernels: each pass walks plain f32 slices
//! and writes its destination where it lies. The composed tensor version allocates about six
//! parameter-sized temporaries per parameter (3 GB at once for Qwen2.5-0.5B's embedding).

use candle_core::{bail, CpuStorage, InplaceOp2, InplaceOp3, Layout, Result};
use rayon::prelude::*;

/// Elements per rayon task: big enough that scheduling is noise.
const CHUNK: usize = 1 << 16;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("{op}: needs a contiguous f32 tensor"),
    }
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => bail!("{op}: needs a contiguous f32 tensor"),
    }
}

/// `dst += src` (gradient accumulation).
pub struct AddAssign;

impl InplaceOp2 for AddAssign {
    fn name(&self) -> &'static str {
        "add-assign"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let d = slice_mut(dst, dst_l, self.name())?;
        let s = slice(src, src_l, self.name())?;
        d.par_chunks_mut(CHUNK)
            .zip(s.par_chunks(CHUNK))
            .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d += s));
        Ok(())
    }
}

/// A moment's running average: `m = decay * m + (1 - decay) * g'` with `g' = scale * g`, or
/// its square for the second moment.
pub struct Moment {
    pub decay: f32,
    pub scale: f32,
    pub square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        grad: &CpuStorage,
        grad_l: &Layout,
    ) -> Result<()> {
        let m = slice_mut(dst, dst_l, self.name())?;
        let g = slice(grad, grad_l, self.name())?;
        let (decay, scale, square) = (self.decay, self.scale, self.square);
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| {
                for (m, g) in m.iter_mut().zip(g) {
                    let g = scale * g;
                    let x = if square { g * g } else { g };
                    *m = decay * *m + (1.0 - decay) * x;
                }
            });
        Ok(())
    }
}

/// The parameter step from the moments: `p = p * (1 - lr * wd) - lr * m̂ / (sqrt(v̂) + eps)`,
/// with the moments' bias corrections.
pub struct Step {
    pub lr: f32,
    pub weight_decay: f32,
    pub bias1: f32,
    pub bias2: f32,
    pub eps: f32,
}

impl InplaceOp3 for Step {
    fn name(&self) -> &'static str {
        "adamw-step"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<()> {
        let p = slice_mut(dst, dst_l, self.name())?;
        let m = slice(m, m_l, self.name())?;
        let v = slice(v, v_l, self.name())?;
        let keep = 1.0 - self.lr * self.weight_decay;
        let Step {
            lr,
            bias1,
            bias2,
            eps,
            ..
        } = *self;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(p, (m, v))| {
                for ((p, m), v) in p.iter_mut().zip(m).zip(v) {
                    *p = *p * keep - lr * (m / bias1) / ((v / bias2).sqrt() + eps);
                }
            });
        Ok(())
    }
}

/// Sum of squares, in f64 (the global gradient norm), without a squared copy.
pub fn sum_squares(t: &candle_core::Tensor) -> Result<f64> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        bail!("sum_squares: a CPU tensor");
    };
    let s = slice(cpu, layout, "sum-squares")?;
    Ok(s.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .sum())
}
