//! AdamW with global gradient-norm clipping, and the learning-rate schedule. The moments are
//! plain tensors the optimiser owns, so a checkpoint can save and restore them exactly.

mod fused;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::model::weight_grads::resident_zeros;
use crate::model::WeightGrads;

/// `[rl.optim]`
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub max_grad_norm: f64,
    pub schedule: Schedule,
    /// Linear warm-up steps (warmup-cosine only).
    pub warmup_steps: usize,
    /// Steps over which the cosine decays to `min_lr_ratio * lr` (warmup-cosine only).
    pub total_steps: usize,
    pub min_lr_ratio: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            total_steps: 0,
            min_lr_ratio: 0.1,
        }
    }
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    #[default]
    Constant,
    WarmupCosine,
}

impl OptimConfig {
    /// The learning rate of update `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::WarmupCosine => {
                if step < self.warmup_steps {
                    return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
                }
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
            }
        }
    }
}

/// AdamW over a fixed list of parameters.
pub struct AdamW {
    params: Vec<Var>,
    /// First and second moments, f32, one pair per parameter.
    moments: Vec<(Tensor, Tensor)>,
    /// f32 master copies of parameters held in a narrower dtype: a bf16 weight cannot take an
    /// update much smaller than 1/256 of itself, which at lr 1e-6 is every update.
    masters: Vec<Option<Tensor>>,
    /// Updates taken so far.
    pub step: usize,
    pub config: OptimConfig,
    /// The matrices' gradient accumulators of the last update, for the next one to reset and
    /// reuse (as torch keeps a parameter's `.grad`); not part of a checkpoint.
    pub accumulators: Option<WeightGrads>,
}

impl AdamW {
    pub fn new(params: Vec<Var>, config: OptimConfig) -> Result<Self> {
        let moments = params
            .iter()
            .map(|p| {
                Ok((
                    resident_zeros(p, DType::F32)?,
                    resident_zeros(p, DType::F32)?,
                ))
            })
            .collect::<Result<_>>()?;
        let masters = params
            .iter()
            .map(|p| match p.dtype() {
                DType::F32 | DType::F64 => Ok(None),
                _ => p.to_dtype(DType::F32).map(Some),
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            params,
            moments,
            masters,
            step: 0,
            config,
            accumulators: None,
        })
    }

    /// The moments, in parameter order (for checkpoints).
    pub fn moments(&self) -> &[(Tensor, Tensor)] {
        &self.moments
    }

    /// The f32 master copies, in parameter order (`None` where the parameter is f32 itself).
    pub fn masters(&self) -> &[Option<Tensor>] {
        &self.masters
    }

    /// Restores a master copy saved by a checkpoint (exact where the model file is bf16).
    pub fn set_master(&mut self, index: usize, master: Tensor) -> Result<()> {
        match self.masters.get_mut(index) {
            Some(Some(m)) if m.shape() == master.shape() => {
                *m = master.to_dtype(DType::F32)?;
                Ok(())
            }
            _ => candle_core::bail!(
                "checkpoint has a master copy for parameter {index}, which has none of that shape"
            ),
        }
    }

    /// Restores moments saved by a checkpoint.
    pub fn set_moments(&mut self, moments: Vec<(Tensor, Tensor)>, step: usize) -> Result<()> {
        if moments.len() != self.params.len() {
            candle_core::bail!(
                "checkpoint has {} optimiser moments for {} parameters",
                moments.len(),
                self.params.len()
            );
        }
        self.moments = moments;
        self.step = step;
        Ok(())
    }

    /// Global L2 norm of the gradients of the parameters.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for p in &self.params {
            if let Some(g) = grads.get(p) {
                total += match fused_path(p, g) {
                    true => fused::sum_squares(g)?,
                    false => g
                        .to_dtype(DType::F32)?
                        .sqr()?
                        .sum_all()?
                        .to_scalar::<f32>()? as f64,
                };
            }
        }
        Ok(total.sqrt())
    }

    /// One update from `grads` (clipped to `max_grad_norm` first). Returns the norm before
    /// clipping. Parameters without a gradient are left as they are.
    pub fn step(&mut self, grads: &GradStore) -> Result<f64> {
        let c = self.config;
        let norm = self.grad_norm(grads)?;
        let scale = if c.max_grad_norm > 0.0 && norm > c.max_grad_norm {
            c.max_grad_norm / (norm + 1e-6)
        } else {
            1.0
        };
        let lr = c.lr_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let (bias1, bias2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let slots = self.moments.iter_mut().zip(self.masters.iter_mut());
        for (p, ((m, v), master)) in self.params.iter().zip(slots) {
            let Some(g) = grads.get(p) else { continue };
            if fused_path(p, g) {
                let g = g.contiguous()?;
                let moment = |decay: f64, square| fused::Moment {
                    decay: decay as f32,
                    scale: scale as f32,
                    square,
                };
                m.inplace_op2(&g, &moment(c.beta1, false))?;
                v.inplace_op2(&g, &moment(c.beta2, true))?;
                let step = fused::Step {
                    lr: lr as f32,
                    weight_decay: c.weight_decay as f32,
                    bias1: bias1 as f32,
                    bias2: bias2 as f32,
                    eps: c.eps as f32,
                };
                p.as_tensor().inplace_op3(m, v, &step)?;
                continue;
            }
            let g = (g.to_dtype(DType::F32)? * scale)?;
            *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&*m / bias1)? / ((&*v / bias2)?.sqrt()? + c.eps)?)?;
            let p32 = match master {
                Some(w) => w.clone(),
                None => p.as_tensor().to_dtype(DType::F32)?,
            };
            let next = ((p32 * (1.0 - lr * c.weight_decay))? - (update * lr)?)?;
            p.set(&next.to_dtype(p.dtype())?)?;
            if let Some(w) = master {
                *w = next;
            }
        }
        Ok(norm)
    }
}

/// f32 parameters on the CPU update in place (no temporaries); others (bf16, GPU) through
/// composed tensor ops.
fn fused_path(p: &Var, g: &Tensor) -> bool {
    p.device().is_cpu() && p.dtype() == DType::F32 && g.dtype() == DType::F32
}

/// `total += grads` for every parameter, in place where the tensors allow it.
pub fn accumulate(total: &mut GradStore, grads: &GradStore, params: &[&Var]) -> Result<()> {
    for p in params {
        let Some(g) = grads.get(p) else { continue };
        match total.get(p) {
            Some(t) if fused_path(p, t) && t.is_contiguous() => {
                t.inplace_op2(&g.contiguous()?, &fused::AddAssign)?
            }
            Some(t) => {
                let sum = (t + g)?;
                total.insert(p, sum);
            }
            None => {
                total.insert(p, g.clone());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        let w = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let config = OptimConfig {
            lr: 0.1,
            max_grad_norm: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![w.clone()], config).unwrap();
        let loss = (w.as_tensor() * &Tensor::new(&[2.0f32, -3.0, 0.5], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let norm = opt.step(&loss.backward().unwrap()).unwrap();
        assert!((norm - (4.0f64 + 9.0 + 0.25).sqrt()).abs() < 1e-5);
        let after: Vec<f32> = w.as_tensor().to_vec1().unwrap();
        // Adam's first step is lr * sign(g) (bias-corrected m / sqrt(v) = g / |g|).
        let expected = [0.9, -1.9, 2.9];
        for (a, e) in after.iter().zip(expected) {
            assert!((a - e).abs() < 1e-5, "{after:?}");
        }
    }

    #[test]
    fn clipping_scales_the_gradient_to_the_max_norm() {
        let w = Var::new(&[0.0f32, 0.0], &Device::Cpu).unwrap();
        let config = OptimConfig {
            lr: 1.0,
            beta1: 0.0,
            beta2: 0.0,
            eps: 0.0,
            max_grad_norm: 1.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![w.clone()], config).unwrap();
        let loss = (w.as_tensor() * &Tensor::new(&[30.0f32, 40.0], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let norm = opt.step(&loss.backward().unwrap()).unwrap();
        assert!((norm - 50.0).abs() < 1e-4);
        // beta = 0 makes Adam a sign step either way; the moments show the clipped gradient.
        let m: Vec<f32> = opt.moments()[0].0.to_vec1().unwrap();
        assert!(
            (m[0] - 0.6).abs() < 1e-4 && (m[1] - 0.8).abs() < 1e-4,
            "{m:?}"
        );
    }

    /// Plain AdamW with clipping and decoupled weight decay, in f64, one element at a time.
    fn reference(w0: &[f64], grads: &[Vec<f64>], c: OptimConfig) -> Vec<f64> {
        let (mut w, mut m, mut v) = (w0.to_vec(), vec![0.0; w0.len()], vec![0.0; w0.len()]);
        for (t, g) in grads.iter().enumerate() {
            let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
            let scale = match norm > c.max_grad_norm {
                true => c.max_grad_norm / (norm + 1e-6),
                false => 1.0,
            };
            let t = t as i32 + 1;
            for i in 0..w.len() {
                let g = g[i] * scale;
                m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g;
                v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g * g;
                let (mh, vh) = (
                    m[i] / (1.0 - c.beta1.powi(t)),
                    v[i] / (1.0 - c.beta2.powi(t)),
                );
                w[i] = w[i] * (1.0 - c.lr * c.weight_decay) - c.lr * mh / (vh.sqrt() + c.eps);
            }
        }
        w
    }

    /// The in-place f32 path and the composed bf16 path both follow plain AdamW over several
    /// steps, with clipping (steps 1 and 3) and weight decay.
    #[test]
    fn both_update_paths_match_plain_adamw() {
        let c = OptimConfig {
            lr: 0.05,
            weight_decay: 0.1,
            max_grad_norm: 2.0,
            ..Default::default()
        };
        let w0 = [0.5, -1.0, 2.0, 0.25];
        let grads = [
            vec![3.0, -1.0, 0.5, 2.0],
            vec![0.1, 0.2, -0.3, 0.0],
            vec![-4.0, 4.0, 1.0, 1.0],
        ];
        let expected = reference(&w0, &grads, c);
        for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::BF16, 2e-2)] {
            let dev = Device::Cpu;
            let init = Tensor::new(&w0, &dev).unwrap().to_dtype(dtype).unwrap();
            let w = Var::from_tensor(&init).unwrap();
            let mut opt = AdamW::new(vec![w.clone()], c).unwrap();
            for g in &grads {
                let g = Tensor::new(g.as_slice(), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let loss = (w.as_tensor() * g).unwrap().sum_all().unwrap();
                opt.step(&loss.backward().unwrap()).unwrap();
            }
            let got: Vec<f64> = w.to_dtype(DType::F64).unwrap().to_vec1().unwrap();
            for (a, e) in got.iter().zip(&expected) {
                assert!(
                    (a - e).abs() < tolerance,
                    "{dtype:?}: {got:?} vs {expected:?}"
                );
            }
        }
    }

    /// Updates of 1e-4 vanish when rounded to a bf16 weight of 1.0 (spacing 2^-7); the f32
    /// master copy adds them up, so 100 of them move the weight.
    #[test]
    fn bf16_weights_take_small_updates_through_the_master_copy() {
        let c = OptimConfig {
            lr: 1e-4,
            ..Default::default()
        };
        let dev = Device::Cpu;
        let w = Var::from_tensor(
            &Tensor::new(&[1.0f32], &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let mut opt = AdamW::new(vec![w.clone()], c).unwrap();
        for _ in 0..100 {
            let loss = w.as_tensor().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        let master: Vec<f32> = opt.masters()[0].as_ref().unwrap().to_vec1().unwrap();
        assert!((master[0] - 0.99).abs() < 1e-4, "{master:?}");
        let weight: Vec<f32> = w.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        assert_eq!(weight[0], half::bf16::from_f32(master[0]).to_f32());
        assert!(weight[0] < 1.0, "the weight never moved: {weight:?}");
    }

    #[test]
    fn accumulating_in_place_sums_the_gradients() {
        let dev = Device::Cpu;
        let w = Var::new(&[1.0f32, 2.0], &dev).unwrap();
        let grads_of = |k: f32| {
            let x = Tensor::new(&[k, -k], &dev).unwrap();
            (w.as_tensor() * x)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let mut total = grads_of(1.0);
        accumulate(&mut total, &grads_of(2.5), &[&w]).unwrap();
        let sum: Vec<f32> = total.get(&w).unwrap().to_vec1().unwrap();
        assert_eq!(sum, [3.5, -3.5]);
    }

    #[test]
    fn warmup_cosine_schedule() {
        let c = OptimConfig {
            lr: 1.0,
            schedule: Schedule::WarmupCosine,
            warmup_steps: 4,
            total_steps: 14,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert!((c.lr_at(0) - 0.25).abs() < 1e-12);
        assert!((c.lr_at(3) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(9) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(14) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(100) - 0.1).abs() < 1e-12);
        assert_eq!(
            OptimConfig {
                lr: 0.3,
                ..Default::default()
            }
            .lr_at(50),
            0.3
        );
    }
}
