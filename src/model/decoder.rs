//! The Qwen2/Llama decoder (a Llama model is a Qwen2 model with zero q/k/v biases): token
//! embedding, N blocks of pre-norm GQA attention with RoPE and a SwiGLU MLP, final RMSNorm, and
//! an LM head tied to the embedding or not. Weights are `Var`s named after the HF tensors.
//!
//! One forward serves both paths: with a gradient it composes differentiable ops (training;
//! given [`WeightGrads`], the matrices' gradients are summed into them in place), without one
//! it uses candle's fused kernels and may extend a KV cache (generation).
//! Positions count from a row's first real column: a cached row that starts later (left
//! padding, or a prompt spliced into a running batch) gets the positions it would have alone.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, TensorId, Var};
use rand::{rngs::StdRng, RngExt, SeedableRng};

use super::config::ModelConfig;
pub use super::kv_cache::KvCache;
use super::weight_grads::{self, WeightGrads};
use super::{attention, ops, ModelError};
use crate::kernels::matvec;
use crate::kernels::swiglu::{self, swiglu};

/// A masked attention score: finite, so rows with every key masked (pads) stay NaN-free.
pub const MASKED: f64 = -1e9;

struct Linear {
    /// (out, in), the HF layout. Holding it transposed spares gemm a repack per call but made
    /// the training step slower and bigger (BENCHMARKS.md).
    weight: Var,
    bias: Option<Var>,
}

impl Linear {
    /// x (b, t, in) -> (b, t, out); a pass without grad may use the decode kernel.
    fn forward(&self, x: &Tensor, pass: &Pass) -> candle_core::Result<Tensor> {
        self.forward_onto(x, None, pass)
    }

    /// [`Self::forward`] added onto `residual` (b, t, out), when given.
    fn forward_onto(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        pass: &Pass,
    ) -> candle_core::Result<Tensor> {
        let (b, t, n) = x.dims3()?;
        let x = x.reshape((b * t, n))?;
        let residual = residual.map(|r| r.reshape((b * t, ()))).transpose()?;
        let bias = self.bias.as_ref().map(|b| b.as_tensor());
        let y = match (pass.grad.sink(&self.weight), bias, residual.as_ref()) {
            (Some(sink), Some(plus), None) | (Some(sink), None, Some(plus)) => {
                weight_grads::project_plus(&x, &self.weight, plus, sink)?
            }
            (Some(sink), bias, residual) => added(
                weight_grads::project(&x, &self.weight, sink)?,
                bias,
                residual,
            )?,
            (None, bias, residual) => {
                let decode = pass.decode.as_deref();
                product(&x, &self.weight, bias, residual, pass.grad.on(), decode)?
            }
        };
        y.reshape((b, t, ()))
    }

    /// `silu(gate) ⊙ up` (b, t, in) through this layer, keeping less for backward where the
    /// pass accumulates weight gradients.
    fn forward_gated(
        &self,
        gate: &Tensor,
        up: &Tensor,
        pass: &Pass,
    ) -> candle_core::Result<Tensor> {
        let (Some(sink), None) = (pass.grad.sink(&self.weight), &self.bias) else {
            return self.forward(&swiglu(gate, up, pass.grad.on())?, pass);
        };
        let (b, t, n) = gate.dims3()?;
        let flat = |x: &Tensor| x.reshape((b * t, n));
        weight_grads::project_gated(&flat(gate)?, &flat(up)?, &self.weight, sink)?.reshape((
            b,
            t,
            (),
        ))
    }
}

/// x (m, in) · w (out, in)ᵀ + bias + residual: without grad, the pass's bf16 copy of `w`
/// where the decode kernel takes it (few rows, or any number on AMX tiles), else `w` itself
/// in the decode kernel (few rows), which add on the way out; else candle's matmul and adds.
fn product(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    grad: bool,
    decode: Option<&DecodeWeights>,
) -> candle_core::Result<Tensor> {
    let copy = decode
        .and_then(|d| d.of(w))
        .filter(|s| !grad && s.parts == 1 && !s.gated);
    match copy.map(|s| &s.weight).filter(|c| matvec::usable(x, c)) {
        Some(copy) => matvec::matmul_nt(x, copy, bias, residual),
        None if !grad && matvec::usable(x, w) => matvec::matmul_nt(x, w, bias, residual),
        None => added(x.matmul(&w.t()?)?, bias, residual),
    }
}

/// `(y + bias) + residual`, the bias broadcast over rows.
fn added(
    y: Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let y = match bias {
        Some(bias) => y.broadcast_add(bias)?,
        None => y,
    };
    match residual {
        Some(r) => r + y,
        None => Ok(y),
    }
}

/// `x` (b, t, in) times the stacked copy of `linears` (which all read it) in one product:
/// (b, t, sum of their outputs), their biases added. None where the pass has no such copy or the
/// decode kernel does not take it; each linear's own forward is then the way.
fn stacked_product(
    linears: &[&Linear],
    x: &Tensor,
    pass: &Pass,
) -> candle_core::Result<Option<Tensor>> {
    let fits = |s: &Stacked| !s.gated && s.parts == linears.len();
    copy_product(linears[0], x, pass, fits, |x, s| {
        matvec::matmul_nt(x, &s.weight, s.bias.as_ref(), None)
    })
}

/// `silu(x gateᵀ) ⊙ (x upᵀ)` (b, t, intermediate) of the MLP in one product with the gated
/// copy of its gate and up matrices; None where the pass has none or the kernel does not
/// take it.
fn gated_product(block: &Block, x: &Tensor, pass: &Pass) -> candle_core::Result<Option<Tensor>> {
    copy_product(
        &block.gate_proj,
        x,
        pass,
        |s| s.gated,
        |x, s| matvec::gated_nt(x, &s.weight),
    )
}

/// `x` (b, t, in) through `kernel` with the pass's copy keyed by `first`'s weight, where the
/// pass has one, no gradient is recorded, the copy `fits` and the decode kernel takes it:
/// (b, t, ..).
fn copy_product(
    first: &Linear,
    x: &Tensor,
    pass: &Pass,
    fits: impl Fn(&Stacked) -> bool,
    kernel: fn(&Tensor, &Stacked) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    let (b, t, n) = x.dims3()?;
    let flat = x.reshape((b * t, n))?;
    let copy = pass
        .decode
        .as_deref()
        .and_then(|d| d.of(&first.weight))
        .filter(|s| !pass.grad.on() && fits(s) && matvec::usable(&flat, &s.weight));
    copy.map(|s| kernel(&flat, s)?.reshape((b, t, ())))
        .transpose()
}

/// `x` through each of `linears` (which all read it): one stacked product split by columns
/// where [`stacked_product`] can, else each linear's forward.
fn forward_shared(
    linears: &[&Linear],
    x: &Tensor,
    pass: &Pass,
) -> candle_core::Result<Vec<Tensor>> {
    let Some(y) = stacked_product(linears, x, pass)? else {
        return linears.iter().map(|l| l.forward(x, pass)).collect();
    };
    let mut at = 0;
    linears
        .iter()
        .map(|l| {
            let rows = l.weight.dim(0)?;
            let part = y.narrow(2, at, rows)?;
            at += rows;
            part.contiguous()
        })
        .collect()
}

/// bf16 copies of the matrices a decode step multiplies (the linear layers and the LM head),
/// for the decode kernel: half the bytes to stream per step, and on CPUs with AVX-512 BF16
/// twice the products per instruction. Taken when a generation starts, because the optimiser
/// updates the f32 weights in place: copies kept across updates would go stale.
///
/// Matrices that multiply the same input (q, k and v; gate and up) are copied stacked by
/// rows, keyed by the first: one product for them packs the input once and splits the work
/// once, where three or two did (a batch-32 decode step makes 120 products instead of 168).
/// Each output element is the same sum either way. Gate and up take turns by blocks of
/// [`swiglu::BLOCK`] rows, so that their product can return the gate itself
/// ([`matvec::gated_nt`]).
pub struct DecodeWeights(HashMap<TensorId, Stacked>);

/// A copy of one or more matrices' rows, stacked, and how many matrices it holds.
struct Stacked {
    weight: Tensor,
    /// The matrices' biases stacked the same way, if every one has a bias.
    bias: Option<Tensor>,
    parts: usize,
    /// A gate's and up's rows by turns ([`matvec::stacked_bf16`] by blocks).
    gated: bool,
}

impl DecodeWeights {
    /// Copies of `model`'s matrices, or None where the decode kernel cannot take them (no
    /// AVX-512, a GPU, weights not f32).
    pub fn of_model(model: &Model) -> candle_core::Result<Option<Self>> {
        if !(model.device.is_cpu() && model.dtype == DType::F32 && matvec::bf16_weights_pay()) {
            return Ok(None);
        }
        let mut copies = HashMap::new();
        let groups = model.blocks.iter().flat_map(|b| b.inputs_shared());
        for (linears, gated) in groups {
            let rows = linears[0].weight.dim(0)?;
            let biases = linears.iter().filter(|l| l.bias.is_some()).count();
            // Gate and up whose rows do not cut into whole blocks, and matrices of which only
            // some have biases, get a copy each.
            if (gated && !rows.is_multiple_of(swiglu::BLOCK))
                || !(biases == 0 || biases == linears.len())
            {
                for l in linears {
                    copies.insert(l.weight.id(), Stacked::of(&[l], 1, false)?);
                }
                continue;
            }
            let blocks = if gated { rows / swiglu::BLOCK } else { 1 };
            copies.insert(
                linears[0].weight.id(),
                Stacked::of(&linears, blocks, gated)?,
            );
        }
        let head = model.lm_head_weight();
        let head_copy = Stacked {
            weight: matvec::stacked_bf16(&[head], 1)?,
            bias: None,
            parts: 1,
            gated: false,
        };
        copies.insert(head.id(), head_copy);
        Ok(Some(Self(copies)))
    }

    /// The copy that starts with `w`'s rows, if there is one.
    fn of(&self, w: &Tensor) -> Option<&Stacked> {
        self.0.get(&w.id())
    }
}

impl Stacked {
    /// `linears` cut into `blocks` runs of rows each, taking turns; where there are several,
    /// their biases (all or none) stacked by whole matrices for [`stacked_product`] to add
    /// (gate and up have none; a lone matrix's forward adds its own).
    fn of(linears: &[&Linear], blocks: usize, gated: bool) -> candle_core::Result<Self> {
        let ws: Vec<&Tensor> = linears.iter().map(|l| l.weight.as_tensor()).collect();
        let biases: Option<Vec<&Tensor>> = linears
            .iter()
            .map(|l| l.bias.as_ref().map(|b| b.as_tensor()))
            .collect::<Option<_>>()
            .filter(|_| linears.len() > 1);
        Ok(Self {
            weight: matvec::stacked_bf16(&ws, blocks)?,
            bias: biases.map(|b| Tensor::cat(&b, 0)).transpose()?,
            parts: ws.len(),
            gated,
        })
    }
}

struct Block {
    input_layernorm: Var,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: Var,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Block {
    /// The linear layers, grouped by the input they read: q, k, v; o; gate, up; down; with
    /// whether the group is the MLP's gate and up.
    fn inputs_shared(&self) -> [(Vec<&Linear>, bool); 4] {
        [
            (vec![&self.q_proj, &self.k_proj, &self.v_proj], false),
            (vec![&self.o_proj], false),
            (vec![&self.gate_proj, &self.up_proj], true),
            (vec![&self.down_proj], false),
        ]
    }

    /// The linear layers with their HF names under `model.layers.{i}`.
    fn linears(&self) -> [(&'static str, &Linear); 7] {
        [
            ("self_attn.q_proj", &self.q_proj),
            ("self_attn.k_proj", &self.k_proj),
            ("self_attn.v_proj", &self.v_proj),
            ("self_attn.o_proj", &self.o_proj),
            ("mlp.gate_proj", &self.gate_proj),
            ("mlp.up_proj", &self.up_proj),
            ("mlp.down_proj", &self.down_proj),
        ]
    }
}

/// Whether a forward pass records a graph for backward, and where the matrices' gradients go.
#[derive(Clone, Copy)]
pub enum Grad<'a> {
    /// No backward follows.
    Off,
    /// Backward returns every parameter's gradient.
    Graph,
    /// Backward returns the vectors' gradients; the matrices' are added into these.
    Into(&'a WeightGrads),
}

impl Grad<'_> {
    pub fn on(&self) -> bool {
        !matches!(self, Grad::Off)
    }

    /// The accumulator `weight`'s gradient goes into, if any.
    pub(super) fn sink(&self, weight: &Tensor) -> Option<weight_grads::Sink<'_>> {
        match self {
            Grad::Into(grads) => grads.sink(weight),
            _ => None,
        }
    }
}

/// What every block of one forward pass shares: the rotary tables for its positions, the
/// attention mask, and whether (and how) it records a graph for backward.
struct Pass<'a> {
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
    grad: Grad<'a>,
    decode: Option<Arc<DecodeWeights>>,
}

/// A loaded decoder.
pub struct Model {
    pub config: ModelConfig,
    embed_tokens: Var,
    blocks: Vec<Block>,
    norm: Var,
    /// None when tied to `embed_tokens`.
    lm_head: Option<Var>,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    dtype: DType,
}

/// Takes a model's tensors by name, each checked against the shape its config gives it.
struct Loader<'a> {
    tensors: HashMap<String, Tensor>,
    shapes: HashMap<String, Vec<usize>>,
    path: &'a Path,
    dtype: DType,
}

impl Loader<'_> {
    fn invalid(&self, detail: String) -> ModelError {
        ModelError::Invalid {
            path: self.path.to_owned(),
            detail,
        }
    }

    fn var(&mut self, name: &str) -> Result<Var, ModelError> {
        let tensor = self.tensors.remove(name).ok_or_else(|| {
            self.invalid(format!(
                "tensor {name} is missing; config.json and the weights disagree"
            ))
        })?;
        if !tensor.dtype().is_float() {
            return Err(self.invalid(format!(
                "tensor {name} holds {:?}, not floats",
                tensor.dtype()
            )));
        }
        let want = self.shapes.get(name).map_or(&[][..], Vec::as_slice);
        if tensor.dims() != want {
            return Err(self.invalid(format!(
                "tensor {name} has shape {:?} where config.json gives {want:?}",
                tensor.dims()
            )));
        }
        Ok(Var::from_tensor(&tensor.to_dtype(self.dtype)?)?)
    }

    /// A bias the architecture may leave out: one value per output row.
    fn optional_bias(&mut self, name: &str, rows: usize) -> Result<Option<Var>, ModelError> {
        if !self.tensors.contains_key(name) {
            return Ok(None);
        }
        self.shapes.insert(name.to_owned(), vec![rows]);
        self.var(name).map(Some)
    }

    fn linear(&mut self, prefix: &str, bias: bool) -> Result<Linear, ModelError> {
        let weight = self.var(&format!("{prefix}.weight"))?;
        let bias = match bias {
            true => Some(self.var(&format!("{prefix}.bias"))?),
            false => self.optional_bias(&format!("{prefix}.bias"), weight.dims()[0])?,
        };
        Ok(Linear { weight, bias })
    }

    /// Tensors no parameter took. A layer config.json does not describe means the two disagree
    /// (an error); anything else (a spare `lm_head.weight` of a tied model, a saved rotary
    /// buffer) is left out with a warning, as other loaders do.
    fn finish(self, config: &ModelConfig) -> Result<(), ModelError> {
        let mut extra: Vec<&String> = self.tensors.keys().collect();
        extra.sort();
        if let Some(layer) = extra.iter().find(|n| n.starts_with("model.layers.")) {
            return Err(self.invalid(format!(
                "{layer} is not in the model config.json describes ({} layers); config.json and the weights disagree",
                config.num_hidden_layers
            )));
        }
        if !extra.is_empty() {
            tracing::warn!(
                "{}: ignoring {} tensor(s) the model does not use: {}",
                self.path.display(),
                extra.len(),
                extra
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }
}

impl Model {
    /// Loads a Hugging Face folder (`config.json` + `model.safetensors`).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let config = ModelConfig::load(dir)?;
        let path = dir.join("model.safetensors");
        if !path.is_file() {
            return Err(ModelError::Invalid {
                path: dir.to_owned(),
                detail: "no model.safetensors (sharded checkpoints are not supported yet)".into(),
            });
        }
        let tensors = candle_core::safetensors::load(&path, device)
            .map_err(|e| ModelError::candle(&path, e))?;
        Self::from_tensors(config, tensors, &path, device, dtype)
    }

    /// Builds a model from named HF tensors.
    pub fn from_tensors(
        config: ModelConfig,
        tensors: HashMap<String, Tensor>,
        path: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let mut l = Loader {
            tensors,
            shapes: parameter_shapes(&config).into_iter().collect(),
            path,
            dtype,
        };
        let bias = config.qkv_bias();
        let blocks = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Block {
                    input_layernorm: l.var(&format!("{p}.input_layernorm.weight"))?,
                    q_proj: l.linear(&format!("{p}.self_attn.q_proj"), bias)?,
                    k_proj: l.linear(&format!("{p}.self_attn.k_proj"), bias)?,
                    v_proj: l.linear(&format!("{p}.self_attn.v_proj"), bias)?,
                    o_proj: l.linear(&format!("{p}.self_attn.o_proj"), false)?,
                    post_attention_layernorm: l
                        .var(&format!("{p}.post_attention_layernorm.weight"))?,
                    gate_proj: l.linear(&format!("{p}.mlp.gate_proj"), false)?,
                    up_proj: l.linear(&format!("{p}.mlp.up_proj"), false)?,
                    down_proj: l.linear(&format!("{p}.mlp.down_proj"), false)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let embed_tokens = l.var("model.embed_tokens.weight")?;
        let norm = l.var("model.norm.weight")?;
        let lm_head = match config.tie_word_embeddings {
            true => None,
            false => Some(l.var("lm_head.weight")?),
        };
        l.finish(&config)?;
        let (cos, sin) = rope_tables(&config, device, dtype)?;
        Ok(Self {
            config,
            embed_tokens,
            blocks,
            norm,
            lm_head,
            cos,
            sin,
            device: device.clone(),
            dtype,
        })
    }

    /// A randomly initialised model (for tests), deterministic under `seed`.
    pub fn random(
        config: ModelConfig,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in parameter_shapes(&config) {
            let n: usize = shape.iter().product();
            let is_norm = name.ends_with("norm.weight");
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let u: f32 = rng.random::<f32>() * 2.0 - 1.0;
                    if is_norm {
                        1.0 + 0.2 * u
                    } else {
                        0.1 * u
                    }
                })
                .collect();
            tensors.insert(name, Tensor::from_vec(values, shape, device)?);
        }
        Self::from_tensors(config, tensors, Path::new("<random>"), device, dtype)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every trainable parameter with its HF name, in a fixed order.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), &b.input_layernorm));
            for (name, lin) in b.linears() {
                out.push((format!("{p}.{name}.weight"), &lin.weight));
                if let Some(bias) = &lin.bias {
                    out.push((format!("{p}.{name}.bias"), bias));
                }
            }
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                &b.post_attention_layernorm,
            ));
        }
        out.push(("model.norm.weight".to_string(), &self.norm));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head));
        }
        out
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (HF layout, loadable by
    /// `transformers`).
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let tensors: HashMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &path)
            .map_err(|e| ModelError::candle(&path, e))?;
        let mut config = serde_json::to_value(&self.config).expect("config serialises");
        config["architectures"] = serde_json::json!([self.config.hf_architecture()]);
        config["torch_dtype"] = serde_json::json!(match self.dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            _ => "float32",
        });
        let path = dir.join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config).expect("json"))
            .map_err(|e| ModelError::io(&path, e))
    }

    /// Hidden states after the final norm: ids (b, t) -> (b, t, hidden).
    ///
    /// `key_mask` (b, cached + t), 1 for real tokens and 0 for padding, or None when nothing is
    /// padded or the cache's row starts say where each row begins. With a cache, the new tokens
    /// attend to the cached ones and are appended.
    pub fn forward(
        &self,
        ids: &Tensor,
        key_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        grad: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let offset = cache.as_ref().map_or(0, |c| c.len);
        let starts = cache.as_ref().and_then(|c| c.starts());
        if starts.is_some() && key_mask.is_some() {
            candle_core::bail!("forward: a cache's row starts give its padding, not a key mask");
        }
        let (cos, sin, key_mask) = match starts {
            None => (
                self.cos.narrow(0, offset, t)?,
                self.sin.narrow(0, offset, t)?,
                key_mask.cloned(),
            ),
            Some(starts) => {
                // Padding columns take position 0: they are masked as keys, and their own
                // outputs are never read.
                let positions: Vec<u32> = starts
                    .iter()
                    .flat_map(|&s| (offset..offset + t).map(move |c| c.saturating_sub(s) as u32))
                    .collect();
                let positions = Tensor::from_vec(positions, (b, t), &self.device)?;
                let (cos, sin) = self.rotary_at(&positions)?;
                let keys: Vec<u32> = starts
                    .iter()
                    .flat_map(|&s| (0..offset + t).map(move |c| (c >= s) as u32))
                    .collect();
                let keys = Tensor::from_vec(keys, (b, offset + t), &self.device)?;
                (cos, sin, Some(keys))
            }
        };
        let pass = Pass {
            cos,
            sin,
            mask: self.attention_mask(b, t, offset, key_mask.as_ref())?,
            grad: if grad { Grad::Graph } else { Grad::Off },
            // Decode steps (one new token a row) take the bf16 copies; prompt passes take them
            // only where bf16 pairs are multiplied (AVX-512 BF16, AMX), whose rows get the
            // same bits in any batch and in any kernel. Elsewhere a
            // prompt's cache is computed in f32 whether its pass had few rows (the decode
            // kernel) or many (gemm), rather than in bf16 alone and in f32 in a batch.
            decode: cache
                .as_ref()
                .filter(|_| t == 1 || matvec::prefill_in_bf16())
                .and_then(|c| c.weights.clone()),
        };
        self.run(ids, &pass, cache)
    }

    /// Hidden states of rows that each pack several sequences: ids (b, t) -> (b, t, hidden).
    /// `positions` (b, t) u32 are each column's RoPE position and `mask` (b, 1, t, t) is
    /// additive, 0 where a column may attend to a key and very negative elsewhere, so one row
    /// can hold a prompt followed by several completions that each see the prompt but not
    /// each other.
    pub fn forward_packed(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        grad: Grad,
    ) -> candle_core::Result<Tensor> {
        let (cos, sin) = self.rotary_at(positions)?;
        let pass = Pass {
            cos,
            sin,
            mask: Some(mask.to_dtype(self.dtype)?),
            grad,
            decode: None,
        };
        self.run(ids, &pass, None)
    }

    /// cos and sin at `positions` (b, t) u32: each (b, t, head_dim / 2).
    fn rotary_at(&self, positions: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let at = |table: &Tensor| table.index_select(&flat, 0)?.reshape((b, t, ()));
        Ok((at(&self.cos)?, at(&self.sin)?))
    }

    /// The layers on a pool worker ([`crate::kernels::on_workers`]), so that their parallel
    /// products start from inside the pool.
    fn run(
        &self,
        ids: &Tensor,
        pass: &Pass,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        crate::kernels::on_workers(&self.device, || self.layers(ids, pass, cache))
    }

    fn layers(
        &self,
        ids: &Tensor,
        pass: &Pass,
        mut cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let grad = pass.grad.on();
        let ids = ids.flatten_all()?;
        let x = match pass.grad.sink(&self.embed_tokens) {
            Some(sink) => weight_grads::lookup(&self.embed_tokens, &ids.to_vec1()?, sink)?,
            None => self.embed_tokens.index_select(&ids, 0)?,
        };
        let mut x = x.reshape((b, t, ()))?;
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = self.block(block, &x, pass, layer_cache)?;
            // Weights are Vars, so every op records its inputs for backward. Without a
            // backward to come, cutting the graph here frees each block's activations as soon
            // as the next block has used them (batch-8 prefill of 600 tokens on SmolLM2:
            // 10.5 GB -> 1.2 GB).
            if !grad {
                x = x.detach();
            }
        }
        if let Some(c) = cache {
            c.len += t;
        }
        ops::rms_norm(&x, &self.norm, self.config.rms_norm_eps, grad)
    }

    /// Logits over the vocabulary: hidden (b, t, h) -> (b, t, vocab), in at least f32.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let (b, t, h) = hidden.dims3()?;
        hidden
            .reshape((b * t, h))?
            .matmul(&head.t()?)?
            .reshape((b, t, ()))?
            .to_dtype(ops::accumulate_dtype(self.dtype))
    }

    /// Logits of each row's last position, for sampling (no gradient): hidden (b, t, h) ->
    /// (b, vocab) in f32, with the LM head `cache` holds if it holds one.
    pub fn next_token_logits(
        &self,
        hidden: &Tensor,
        cache: &KvCache,
    ) -> candle_core::Result<Tensor> {
        let t = hidden.dim(1)?;
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?.detach();
        product(
            &last,
            self.lm_head_weight(),
            None,
            None,
            false,
            cache.weights.as_deref(),
        )?
        .to_dtype(DType::F32)
    }

    /// The LM head weight (vocab, hidden), for chunked log-prob computation.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head
            .as_ref()
            .unwrap_or(&self.embed_tokens)
            .as_tensor()
    }

    /// Additive mask (b, 1, t, offset + t): causal, and padding keys masked. None when
    /// neither applies (one new token, nothing padded).
    fn attention_mask(
        &self,
        b: usize,
        t: usize,
        offset: usize,
        key_mask: Option<&Tensor>,
    ) -> candle_core::Result<Option<Tensor>> {
        let total = offset + t;
        if t == 1 && key_mask.is_none() {
            return Ok(None);
        }
        let causal: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..total).map(move |j| if j <= offset + i { 0.0 } else { MASKED as f32 })
            })
            .collect();
        let mut mask = Tensor::from_vec(causal, (1, 1, t, total), &self.device)?;
        if let Some(keys) = key_mask {
            let keys = ((keys.to_dtype(DType::F32)?.affine(1.0, -1.0)? * -MASKED)?
                .reshape((b, 1, 1, total)))?;
            mask = mask.broadcast_add(&keys)?;
        }
        Ok(Some(mask.to_dtype(self.dtype)?))
    }

    fn block(
        &self,
        block: &Block,
        x: &Tensor,
        pass: &Pass,
        cache: Option<(&mut KvCache, usize)>,
    ) -> candle_core::Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        let h = ops::rms_norm(x, &block.input_layernorm, eps, pass.grad.on())?;
        let heads = self.attention(block, &h, pass, cache)?;
        let x = block.o_proj.forward_onto(&heads, Some(x), pass)?;
        let h = ops::rms_norm(&x, &block.post_attention_layernorm, eps, pass.grad.on())?;
        match gated_product(block, &h, pass)? {
            Some(gate) => block.down_proj.forward_onto(&gate, Some(&x), pass),
            None => {
                let gate = block.gate_proj.forward(&h, pass)?;
                let up = block.up_proj.forward(&h, pass)?;
                x + block.down_proj.forward_gated(&gate, &up, pass)?
            }
        }
    }

    /// Self-attention's heads, merged: (b, t, heads x head_dim), before `o_proj`.
    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        pass: &Pass,
        cache: Option<(&mut KvCache, usize)>,
    ) -> candle_core::Result<Tensor> {
        let Pass {
            cos,
            sin,
            mask,
            grad,
            ..
        } = pass;
        let (mask, grad) = (mask.as_ref(), grad.on());
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let split = |y: Tensor, n: usize| y.reshape((b, t, n, d))?.transpose(1, 2);
        let projections = [&block.q_proj, &block.k_proj, &block.v_proj];
        let [q, k, v] = as_array(forward_shared(&projections, x, pass)?)?;
        let q = split(q, heads)?;
        let k = split(k, kv_heads)?;
        let v = split(v, kv_heads)?.contiguous()?;
        let q = ops::rope(&q, cos, sin, grad)?;
        let k = ops::rope(&k, cos, sin, grad)?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v, grad)?,
            None => (k, v),
        };
        // GQA without copying K and V per query head: the `rep` query heads that share a kv
        // head become rows of one product, (b, kv_heads, rep * t, d).
        let rep = heads / kv_heads;
        // Scale q (t x d) rather than the scores (t x T): one less (T x T) tensor in the graph.
        let q = (q / (d as f64).sqrt())?.reshape((b, kv_heads, rep * t, d))?;
        let out = attention::attend(&q, &k, &v, mask, grad)?.reshape((b, heads, t, d))?;
        out.transpose(1, 2)?.reshape((b, t, heads * d))
    }
}

/// The N outputs of [`forward_shared`] over N linears.
fn as_array<const N: usize>(outputs: Vec<Tensor>) -> candle_core::Result<[Tensor; N]> {
    outputs
        .try_into()
        .map_err(|o: Vec<Tensor>| candle_core::Error::Msg(format!("{} outputs for {N}", o.len())))
}

/// cos and sin of every position and frequency: (max_positions, head_dim / 2).
fn rope_tables(
    c: &ModelConfig,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<(Tensor, Tensor)> {
    let d = c.head_dim();
    let inv_freq: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / c.rope_theta.powf(2.0 * i as f64 / d as f64) as f32)
        .collect();
    let n = c.max_position_embeddings;
    let inv_freq = Tensor::from_vec(inv_freq, (1, d / 2), device)?;
    let positions = Tensor::arange(0u32, n as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((n, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    ))
}

/// Every parameter's HF name and shape under `config`.
pub fn parameter_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, kv) = (
        c.hidden_size,
        c.intermediate_size,
        c.num_key_value_heads * c.head_dim(),
    );
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        if c.qkv_bias() {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![h]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    out
}

#[cfg(test)]
mod tests;
