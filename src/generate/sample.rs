//! Choosing the next token from logits: greedy, or temperature + top-p sampling with a seeded
//! RNG. Also the log-probability of the chosen token under the (tempered) distribution, which
//! the policy gradient compares against later.

use rand::{Rng, RngExt};

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
/// vocabulary order, one pass over the row; only a nucleus needs the tokens sorted by
/// probability, which over a 151,936-token vocabulary cost milliseconds a row and step.
pub fn choose<R: Rng + ?Sized>(logits: &[f32], sampling: Sampling, rng: &mut R) -> (u32, f32) {
    let t = match sampling.temperature > 0.0 {
        true => sampling.temperature,
        false => 1.0,
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // exp((l - max) / t): each token's unnormalised probability, summed in f64.
    let weights: Vec<f32> = logits.iter().map(|&l| ((l - max) / t).exp()).collect();
    let sum: f64 = weights.iter().map(|&w| w as f64).sum();
    let log_sum = sum.ln() as f32;
    let pick = |i: usize| (i as u32, (logits[i] - max) / t - log_sum);
    if sampling.temperature <= 0.0 {
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        return pick(best);
    }
    if sampling.top_p >= 1.0 {
        let mut target = rng.random::<f64>() * sum;
        let mut last = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                last = i;
                target -= w as f64;
                if target <= 0.0 {
                    return pick(i);
                }
            }
        }
        return pick(last);
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
