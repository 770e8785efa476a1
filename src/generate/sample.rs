//! Choosing the next token from logits: greedy, or temperature + top-p sampling with a seeded
//! RNG. Also the log-probability of the chosen token under the (tempered) distribution, which
//! the policy gradient compares against later.

use rand::{Rng, RngExt};

use crate::kernels::{exp, reduce};

/// How tokens are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus: sample from the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
}

/// Picks a token; returns it with its log-probability (under logits / temperature, or the
/// untempered distribution when greedy).
///
/// With `top_p` 1 (self-play's only setting) a token is drawn by walking the distribution in
/// vocabulary order, a block's sum at a time; only a nucleus needs the tokens sorted by
/// probability, which over a 151,936-token vocabulary cost milliseconds a row and step. Every
/// pass over the row is vectorised (exp, max, sums in lanes): with libm's scalar exp
/// and one serial sum, a batch-32 decode step spent ~10 ms sampling.
pub fn choose<R: Rng + ?Sized>(logits: &[f32], sampling: Sampling, rng: &mut R) -> (u32, f32) {
    let t = match sampling.temperature > 0.0 {
        true => sampling.temperature,
        false => 1.0,
    };
    let max = reduce::max(logits);
    // exp((l - max) / t): each token's unnormalised probability.
    let mut weights: Vec<f32> = logits.iter().map(|&l| (l - max) / t).collect();
    exp::shifted_in_place(&mut weights, 0.0);
    let blocks: Vec<f64> = weights.chunks(BLOCK).map(block_sum).collect();
    let sum: f64 = blocks.iter().sum();
    let log_sum = sum.ln() as f32;
    let pick = |i: usize| (i as u32, (logits[i] - max) / t - log_sum);
    if sampling.temperature <= 0.0 {
        // The first of the largest logits.
        return pick(logits.iter().position(|&l| l == max).unwrap_or(0));
    }
    if sampling.top_p >= 1.0 {
        return pick(draw(&weights, &blocks, rng.random::<f64>() * sum));
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let mut kept = 0;
    let mut mass = 0.0f64;
    for &i in &order {
        mass += weights[i] as f64 / sum;
        kept += 1;
        if mass >= sampling.top_p as f64 {
            break;
        }
    }
    let mut target = rng.random::<f64>() * mass;
    for &i in &order[..kept] {
        target -= weights[i] as f64 / sum;
        if target <= 0.0 {
            return pick(i);
        }
    }
    pick(order[kept - 1])
}

/// Tokens a block sum covers when drawing.
const BLOCK: usize = 512;

/// A block's weights summed in f64.
fn block_sum(weights: &[f32]) -> f64 {
    reduce::sum_of(weights, |w| w as f64)
}

/// The token where the running sum of `weights` in vocabulary order reaches `target`: whole
/// blocks skipped by their sums, then the block it falls in walked a token at a time.
fn draw(weights: &[f32], blocks: &[f64], mut target: f64) -> usize {
    for (b, &s) in blocks.iter().enumerate() {
        if target > s {
            target -= s;
            continue;
        }
        let first = b * BLOCK;
        for (i, &w) in weights[first..].iter().take(BLOCK).enumerate() {
            target -= w as f64;
            if w > 0.0 && target <= 0.0 {
                return first + i;
            }
        }
    }
    // Rounding left a sliver past the end: the last token with any weight.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn greedy_takes_the_argmax_with_its_log_prob() {
        let mut rng = StdRng::seed_from_u64(0);
        let (token, lp) = choose(
            &[0.0, 2.0, 1.0],
            Sampling {
                temperature: 0.0,
                top_p: 1.0,
            },
            &mut rng,
        );
        assert_eq!(token, 1);
        let expected = 2.0 - (1f64 + 2f64.exp() + 1f64.exp()).ln();
        assert!((lp as f64 - expected).abs() < 1e-6);
    }

    #[test]
    fn sampling_follows_the_distribution_and_top_p_cuts_the_tail() {
        let mut rng = StdRng::seed_from_u64(1);
        let logits = [0f32, (3f32).ln(), -30.0];
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
        };
        let ones = (0..4000)
            .filter(|_| choose(&logits, s, &mut rng).0 == 1)
            .count();
        assert!((ones as f64 / 4000.0 - 0.75).abs() < 0.03, "{ones}");
        let top = Sampling {
            temperature: 1.0,
            top_p: 0.5,
        };
        assert!((0..200).all(|_| choose(&logits, top, &mut rng).0 == 1));
    }

    #[test]
    fn drawing_by_blocks_picks_what_a_token_by_token_walk_picks() {
        // Multiples of 1/64 with zeros among them: every sum is exact, so the two walks must
        // agree even at the targets that land exactly on a running sum.
        let weights: Vec<f32> = (0..3 * BLOCK + 77)
            .map(|i| match i % 7 {
                3 => 0.0,
                _ => (i * 37 % 101) as f32 / 64.0,
            })
            .collect();
        let blocks: Vec<f64> = weights.chunks(BLOCK).map(block_sum).collect();
        let walk = |mut target: f64| {
            let mut last = 0;
            for (i, &w) in weights.iter().enumerate() {
                if w > 0.0 {
                    last = i;
                    target -= w as f64;
                    if target <= 0.0 {
                        return i;
                    }
                }
            }
            last
        };
        let mut running = 0.0;
        for &w in &weights {
            running += w as f64;
            for target in [running - 1.0 / 128.0, running, running + 1.0 / 128.0] {
                assert_eq!(draw(&weights, &blocks, target), walk(target), "{target}");
            }
        }
        assert_eq!(draw(&weights, &blocks, 0.0), 1);
        assert_eq!(draw(&weights, &blocks, running + 1.0), walk(running + 1.0));
    }

    #[test]
    fn log_probs_over_a_full_vocabulary_match_a_plain_log_softmax() {
        let logits: Vec<f32> = (0..151_936)
            .map(|i| ((i as f32 * 0.618).sin() * 9.0) + (i % 1000 == 0) as u8 as f32 * 12.0)
            .collect();
        let s = Sampling {
            temperature: 0.7,
            top_p: 1.0,
        };
        let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / 0.7).collect();
        let top = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_sum = scaled.iter().map(|&x| (x - top).exp()).sum::<f64>().ln() + top;
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            let (token, lp) = choose(&logits, s, &mut rng);
            let want = scaled[token as usize] - log_sum;
            assert!((lp as f64 - want).abs() < 1e-4, "{lp} vs {want}");
        }
        let greedy = Sampling {
            temperature: 0.0,
            top_p: 1.0,
        };
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        assert_eq!(choose(&logits, greedy, &mut rng).0, best as u32);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = Sampling {
            temperature: 0.8,
            top_p: 0.95,
        };
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| choose(&logits, s, &mut rng).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
