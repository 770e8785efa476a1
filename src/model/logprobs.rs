//! Log-probabilities of given completions under the current weights (teacher forcing), for the
//! policy gradient. The LM head and log-softmax run over chunks of positions, so a
//! (positions x vocabulary) tensor is never built for the whole batch: with Qwen's 151,936-token
//! vocabulary one f32 copy for 8 x 256 positions alone is 1.2 GB. The softmax itself is
//! computed without a graph, and the gradient enters through a surrogate that keeps one
//! (chunk x vocabulary) tensor per chunk, where a composed log-softmax keeps five.
//!
//! Completions of the same prompt (the solver's n samples of a task) share one row of the
//! pass: the prompt is computed once, and each completion attends to it but not to the others.

use std::collections::HashMap;

use candle_core::{DType, Tensor, D};

use super::decoder::{Grad, MASKED};
use super::weight_grads::{self, Coefficients};
use super::Model;
use crate::kernels::softmax;

/// A prompt and the completion whose tokens are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scored<'a> {
    pub prompt: &'a [u32],
    pub completion: &'a [u32],
}

/// Per-token log-probs of the completions and, when asked, the entropy of each token's
/// distribution; both (sum of completion lengths,), in sequence order.
pub struct TokenScores {
    pub logprobs: Tensor,
    pub entropy: Option<Tensor>,
}

/// Positions per chunk of the LM head + log-softmax.
const CHUNK: usize = 128;

/// Whether [`score`] computes each token's entropy, and with a gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entropy {
    Skip,
    /// The values only (a metric).
    Value,
    /// Differentiable (an entropy bonus in the loss).
    WithGrad,
}

/// log p(completion[j] | prompt, completion[..j]) for every completion token of every sequence,
/// concatenated in order: shape (sum of completion lengths,). With `grad`, differentiable.
/// Completions of the same prompt share a row, rows are left-padded into one batch; call it
/// per micro-batch to bound memory ([`pass_size`]).
pub fn completion_logprobs(
    model: &Model,
    batch: &[Scored],
    temperature: f32,
    grad: bool,
) -> candle_core::Result<Tensor> {
    let grad = if grad { Grad::Graph } else { Grad::Off };
    Ok(score(model, batch, temperature, grad, Entropy::Skip)?.logprobs)
}

/// [`completion_logprobs`] plus, unless [`Entropy::Skip`], each position's entropy under
/// logits / T; `grad` says where the gradients go.
pub fn score(
    model: &Model,
    batch: &[Scored],
    temperature: f32,
    grad: Grad,
    entropy: Entropy,
) -> candle_core::Result<TokenScores> {
    let device = model.device();
    let packing = Packing::new(batch);
    let (b, width, targets) = (packing.rows, packing.width, packing.targets);
    if targets.is_empty() {
        let empty = Tensor::zeros(0, DType::F32, device)?;
        return Ok(TokenScores {
            entropy: (entropy != Entropy::Skip).then(|| empty.clone()),
            logprobs: empty,
        });
    }
    let ids = Tensor::from_vec(packing.ids, (b, width), device)?;
    let positions = Tensor::from_vec(packing.positions, (b, width), device)?;
    let mask = Tensor::from_vec(packing.mask, (b, 1, width, width), device)?;
    let hidden = model.forward_packed(&ids, &positions, &mask, grad)?;
    let h = hidden.dim(D::Minus1)?;
    let rows = hidden
        .reshape((b * width, h))?
        .index_select(&Tensor::new(packing.predicting.as_slice(), device)?, 0)?;
    let head = model.lm_head_weight();
    let t = if temperature > 0.0 {
        temperature as f64
    } else {
        1.0
    };
    let mut chunks = Vec::new();
    let mut entropies = Vec::new();
    for start in (0..targets.len()).step_by(CHUNK) {
        let n = CHUNK.min(targets.len() - start);
        let target = Tensor::new(&targets[start..start + n], device)?;
        let (logp, h) = chunk_scores(&rows.narrow(0, start, n)?, head, &target, t, grad, entropy)?;
        chunks.push(logp);
        entropies.extend(h);
    }
    Ok(TokenScores {
        logprobs: Tensor::cat(&chunks, 0)?,
        entropy: match entropy {
            Entropy::Skip => None,
            _ => Some(Tensor::cat(&entropies, 0)?),
        },
    })
}

/// A scoring pass laid out as rows: each row holds one prompt, then every completion of it in
/// the batch, left-padded to the widest row. A completion attends to its prompt and to its own
/// earlier tokens only, and its positions continue from the prompt's, so each scores as it
/// would alone while the prompt is computed (forward and backward) once.
struct Packing {
    ids: Vec<u32>,
    positions: Vec<u32>,
    /// Additive attention mask (rows, width, width).
    mask: Vec<f32>,
    /// Flat indices (row * width + column) of the positions whose outputs predict the
    /// completions' tokens, in batch order, and those tokens.
    predicting: Vec<u32>,
    targets: Vec<u32>,
    rows: usize,
    width: usize,
}

impl Packing {
    fn new(batch: &[Scored]) -> Self {
        let rows = pack(batch);
        let b = rows.len();
        let width = rows.iter().map(|r| r.len(batch)).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * width);
        let mut positions = Vec::with_capacity(b * width);
        let mut mask = vec![MASKED as f32; b * width * width];
        // Per completion, the flat index of the position that predicts its first token (the
        // prompt's last) and that of its own first token.
        let mut starts = vec![(0usize, 0usize); batch.len()];
        for (r, row) in rows.iter().enumerate() {
            let pad = width - row.len(batch);
            ids.extend(std::iter::repeat_n(0u32, pad).chain(row.prompt.iter().copied()));
            positions.extend(std::iter::repeat_n(0u32, pad).chain(0..row.prompt.len() as u32));
            // Which part of the row each column holds: None for padding, 0 for the prompt,
            // k + 1 for the row's k-th completion.
            let mut segment: Vec<Option<usize>> = std::iter::repeat_n(None, pad)
                .chain(std::iter::repeat_n(Some(0), row.prompt.len()))
                .collect();
            // The prompt must be non-empty: the first completion token is predicted from it.
            let prompt_end = (r * width + segment.len()).saturating_sub(1);
            for (k, &i) in row.members.iter().enumerate() {
                starts[i] = (prompt_end, r * width + segment.len());
                let completion = batch[i].completion;
                ids.extend_from_slice(completion);
                let after = row.prompt.len() as u32;
                positions.extend(after..after + completion.len() as u32);
                segment.extend(std::iter::repeat_n(Some(k + 1), completion.len()));
            }
            let block = &mut mask[r * width * width..(r + 1) * width * width];
            for (q, &part) in segment.iter().enumerate() {
                let Some(part) = part else { continue };
                for (key, &held) in segment[..=q].iter().enumerate() {
                    if held == Some(0) || held == Some(part) {
                        block[q * width + key] = 0.0;
                    }
                }
            }
        }
        let mut predicting = Vec::new();
        let mut targets = Vec::new();
        for (s, &(prompt_end, start)) in batch.iter().zip(&starts) {
            let n = s.completion.len();
            predicting.extend((0..n).map(|j| match j {
                0 => prompt_end as u32,
                _ => (start + j - 1) as u32,
            }));
            targets.extend_from_slice(s.completion);
        }
        Self {
            ids,
            positions,
            mask,
            predicting,
            targets,
            rows: b,
            width,
        }
    }
}

/// One row of a scoring pass: a prompt and the batch's completions of it, in batch order.
struct Row<'a> {
    prompt: &'a [u32],
    members: Vec<usize>,
}

impl Row<'_> {
    fn len(&self, batch: &[Scored]) -> usize {
        self.prompt.len()
            + self
                .members
                .iter()
                .map(|&i| batch[i].completion.len())
                .sum::<usize>()
    }
}

/// Groups the completions of identical prompts into rows, in order of first appearance.
fn pack<'a>(batch: &[Scored<'a>]) -> Vec<Row<'a>> {
    let mut rows: Vec<Row<'a>> = Vec::new();
    let mut of_prompt: HashMap<&[u32], usize> = HashMap::new();
    for (i, s) in batch.iter().enumerate() {
        let r = *of_prompt.entry(s.prompt).or_insert_with(|| {
            rows.push(Row {
                prompt: s.prompt,
                members: Vec::new(),
            });
            rows.len() - 1
        });
        rows[r].members.push(i);
    }
    rows
}

/// Positions a scoring pass over `batch` computes (rows x widest row): what its activations
/// take in memory grows with this, and with each row's length squared in attention.
pub fn pass_size(batch: &[Scored]) -> usize {
    let rows = pack(batch);
    rows.len() * rows.iter().map(|r| r.len(batch)).max().unwrap_or(0)
}

/// log p(target) and optionally the entropy of rows (n, h) under softmax(rows · headᵀ / t),
/// differentiable with `grad`.
///
/// The values come from a pass without graph. Their gradients come from surrogates
/// `sum(rows ⊙ (C · head)) / t` whose coefficients C (n, vocab) are held constant: with
/// C = onehot(target) - p the surrogate's gradient with respect to rows and head is exactly that
/// of log p(target), and with C = -p ⊙ (log p + H) that of the entropy H. Each keeps one
/// (n, vocab) tensor for backward; the composed log-softmax kept five. With an accumulator for
/// the head, its gradient Cᵀ · rows is added there (`weight_grads.rs`), and log p(target)'s C
/// is recomputed in backward from the rows and the head rather than kept.
fn chunk_scores(
    rows: &Tensor,
    head: &Tensor,
    target: &Tensor,
    t: f64,
    grad: Grad,
    entropy: Entropy,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let accumulate = super::ops::accumulate_dtype(rows.dtype());
    let sink = grad.sink(head);
    // With the head's accumulator the logits multiply as the pass's other products do.
    let logits = match sink {
        Some(sink) => weight_grads::logits(&rows.detach(), &head.detach(), sink)?,
        None => rows.detach().matmul(&head.detach().t()?)?,
    }
    .to_dtype(accumulate)?;
    // The weights are Vars, so rows and head track a graph even from a pass without grad.
    let tracked = grad.on() && (rows.track_op() || head.track_op());
    // Scoring without a gradient, and training with the head's accumulator and no entropy
    // bonus (the CPU's update), need only the softmax's fused statistics.
    if entropy != Entropy::WithGrad && (!tracked || sink.is_some()) {
        let targets = target.to_vec1()?;
        if let Some(stats) = softmax::fused(&logits, &targets, t)? {
            let value = match sink.filter(|_| tracked) {
                Some(sink) => {
                    let c = Coefficients::LogProbs { targets, t };
                    (stats.logp_target + weight_grads::head_surrogate(rows, head, c, sink)?)?
                }
                None => stats.logp_target,
            };
            return Ok((value, (entropy == Entropy::Value).then_some(stats.entropy)));
        }
    }
    let logp = candle_nn::ops::log_softmax(&(logits / t)?, D::Minus1)?;
    let value = logp.gather(&target.unsqueeze(1)?, 1)?.squeeze(1)?;
    if !tracked && entropy == Entropy::Skip {
        return Ok((value, None));
    }
    let p = logp.exp()?;
    // d/d(rows, head) of sum(rows ⊙ (C · head)) / t, as a zero-valued term. `c` builds C (only
    // the accumulator's path needs it whole) and `c_head` is C · head.
    let with_grad = |value: Tensor,
                     c: &dyn Fn() -> candle_core::Result<Tensor>,
                     c_head: &dyn Fn() -> candle_core::Result<Tensor>|
     -> candle_core::Result<Tensor> {
        let zero = match sink {
            Some(sink) => {
                weight_grads::head_surrogate(rows, head, Coefficients::Held((c()? / t)?), sink)?
            }
            None => {
                let surrogate = ((rows * c_head()?)?.sum(D::Minus1)?.to_dtype(accumulate)? / t)?;
                (&surrogate - surrogate.detach())?
            }
        };
        value + zero
    };
    let logp_target = match tracked {
        true => with_grad(
            value,
            &|| {
                let c = p.neg()?;
                let ones = Tensor::ones((target.dim(0)?, 1), c.dtype(), c.device())?;
                c.scatter_add_set(&target.unsqueeze(1)?, &ones, 1)?;
                Ok(c)
            },
            // C · head = head[target] - p · head.
            &|| head.index_select(target, 0)? - p.to_dtype(head.dtype())?.matmul(head)?,
        )?,
        false => value,
    };
    let entropy = match entropy {
        Entropy::Skip => None,
        _ => {
            let h = (&p * &logp)?.sum(D::Minus1)?.neg()?;
            Some(match tracked && entropy == Entropy::WithGrad {
                true => {
                    let c = || {
                        (p.neg()? * logp.broadcast_add(&h.unsqueeze(1)?)?)?.to_dtype(head.dtype())
                    };
                    with_grad(h.clone(), &c, &|| c()?.matmul(head))?
                }
                false => h,
            })
        }
    };
    Ok((logp_target, entropy))
}
