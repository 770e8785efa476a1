//! Log-probabilities of given completions under the current weights (teacher forcing), for the
//! policy gradient. The LM head and log-softmax run over chunks of positions, so a
//! (positions x vocabulary) tensor is never built for the whole batch: with Qwen's 151,936-token
//! vocabulary one f32 copy for 8 x 256 positions alone is 1.2 GB. The softmax itself is
//! computed without a graph, and the gradient enters through a surrogate that keeps one
//! (chunk x vocabulary) tensor per chunk, where a composed log-softmax keeps five.

use candle_core::{DType, Tensor, D};

use super::Model;

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
/// Sequences are left-padded into one batch; call it per micro-batch to bound memory.
pub fn completion_logprobs(
    model: &Model,
    batch: &[Scored],
    temperature: f32,
    grad: bool,
) -> candle_core::Result<Tensor> {
    Ok(score(model, batch, temperature, grad, Entropy::Skip)?.logprobs)
}

/// [`completion_logprobs`] plus, unless [`Entropy::Skip`], each position's entropy under
/// logits / T.
pub fn score(
    model: &Model,
    batch: &[Scored],
    temperature: f32,
    grad: bool,
    entropy: Entropy,
) -> candle_core::Result<TokenScores> {
    let device = model.device();
    let width = batch
        .iter()
        .map(|s| s.prompt.len() + s.completion.len())
        .max()
        .unwrap_or(0);
    let mut ids = Vec::with_capacity(batch.len() * width);
    let mut mask = Vec::with_capacity(batch.len() * width);
    // Flat indices (row * width + column) of the positions whose outputs predict completion tokens.
    let mut predicting = Vec::new();
    let mut targets = Vec::new();
    for (row, s) in batch.iter().enumerate() {
        let len = s.prompt.len() + s.completion.len();
        let pad = width - len;
        ids.extend(
            std::iter::repeat_n(0u32, pad)
                .chain(s.prompt.iter().copied())
                .chain(s.completion.iter().copied()),
        );
        mask.extend(std::iter::repeat_n(0u32, pad).chain(std::iter::repeat_n(1, len)));
        let first = pad + s.prompt.len();
        for (j, &token) in s.completion.iter().enumerate() {
            // The prompt must be non-empty: the first completion token is predicted from it.
            predicting.push((row * width + first + j - 1) as u32);
            targets.push(token);
        }
    }
    if targets.is_empty() {
        let empty = Tensor::zeros(0, DType::F32, device)?;
        return Ok(TokenScores {
            entropy: (entropy != Entropy::Skip).then(|| empty.clone()),
            logprobs: empty,
        });
    }
    let ids = Tensor::from_vec(ids, (batch.len(), width), device)?;
    let mask = Tensor::from_vec(mask, (batch.len(), width), device)?;
    let padded = batch
        .iter()
        .any(|s| s.prompt.len() + s.completion.len() < width);
    let hidden = model.forward(&ids, padded.then_some(&mask), None, grad)?;
    let h = hidden.dim(D::Minus1)?;
    let rows = hidden
        .reshape((batch.len() * width, h))?
        .index_select(&Tensor::new(predicting.as_slice(), device)?, 0)?;
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

/// log p(target) and optionally the entropy of rows (n, h) under softmax(rows · headᵀ / t),
/// differentiable with `grad`.
///
/// The values come from a pass without graph. Their gradients come from surrogates
/// `sum(rows ⊙ (C · head)) / t` whose coefficients C (n, vocab) are held constant: with
/// C = onehot(target) - p the surrogate's gradient with respect to rows and head is exactly that
/// of log p(target), and with C = -p ⊙ (log p + H) that of the entropy H. Each keeps one
/// (n, vocab) tensor for backward; the composed log-softmax kept five.
fn chunk_scores(
    rows: &Tensor,
    head: &Tensor,
    target: &Tensor,
    t: f64,
    grad: bool,
    entropy: Entropy,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let accumulate = super::ops::accumulate_dtype(rows.dtype());
    let logits = (rows
        .detach()
        .matmul(&head.detach().t()?)?
        .to_dtype(accumulate)?
        / t)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let value = logp.gather(&target.unsqueeze(1)?, 1)?.squeeze(1)?;
    // The weights are Vars, so rows and head track a graph even from a pass without grad.
    let tracked = grad && (rows.track_op() || head.track_op());
    if !tracked && entropy == Entropy::Skip {
        return Ok((value, None));
    }
    let p = logp.exp()?;
    // d/d(rows, head) of sum(rows ⊙ (C · head)) / t, as a zero-valued term.
    let with_grad = |value: Tensor, direction: Tensor| -> candle_core::Result<Tensor> {
        let surrogate = ((rows * direction)?.sum(D::Minus1)?.to_dtype(accumulate)? / t)?;
        value + (&surrogate - surrogate.detach())?
    };
    let logp_target = match tracked {
        // C · head = head[target] - p · head.
        true => with_grad(
            value,
            (head.index_select(target, 0)? - p.to_dtype(head.dtype())?.matmul(head)?)?,
        )?,
        false => value,
    };
    let entropy = match entropy {
        Entropy::Skip => None,
        _ => {
            let h = (&p * &logp)?.sum(D::Minus1)?.neg()?;
            Some(match tracked && entropy == Entropy::WithGrad {
                true => {
                    let c = (p.neg()? * logp.broadcast_add(&h.unsqueeze(1)?)?)?;
                    with_grad(h, c.to_dtype(head.dtype())?.matmul(head)?)?
                }
                false => h,
            })
        }
    };
    Ok((logp_target, entropy))
}
