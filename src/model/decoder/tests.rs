use candle_core::backprop::GradStore;

use super::*;
use crate::model::config::Architecture;
use candle_core::D;
use rand::RngExt;

fn tiny(arch: Architecture, tied: bool) -> ModelConfig {
    ModelConfig::tiny(arch, tied)
}

fn ids(rows: &[&[u32]], dev: &Device) -> Tensor {
    let t = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), t), dev).unwrap()
}

/// Cross-entropy of next-token predictions over non-pad positions.
fn loss(model: &Model, tokens: &Tensor, mask: &Tensor) -> Tensor {
    let (b, t) = tokens.dims2().unwrap();
    let hidden = model.forward(tokens, Some(mask), None, true).unwrap();
    let logits = model
        .logits(&hidden.narrow(1, 0, t - 1).unwrap())
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let targets = tokens.narrow(1, 1, t - 1).unwrap().unsqueeze(2).unwrap();
    let picked = logp
        .gather(&targets.contiguous().unwrap(), 2)
        .unwrap()
        .squeeze(2)
        .unwrap();
    // A prediction counts when both its input and its target are real tokens.
    let weights = (mask.narrow(1, 0, t - 1).unwrap() * mask.narrow(1, 1, t - 1).unwrap())
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    ((picked * weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap()
        / b as f64)
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Cross-entropy of next-token predictions on two rows, the second left-padded by two (pad id
/// 0, masked).
fn next_token_loss(model: &Model) -> Tensor {
    let dev = model.device();
    let tokens = ids(&[&[3, 5, 7, 2, 9, 4], &[0, 0, 1, 6, 8, 10]], dev);
    let mask = ids(&[&[1, 1, 1, 1, 1, 1], &[0, 0, 1, 1, 1, 1]], dev);
    loss(model, &tokens, &mask)
}

/// Every parameter's analytic gradient of `loss` matches central finite differences.
fn check_gradients(config: ModelConfig, loss: impl Fn(&Model) -> Tensor) {
    let dev = Device::Cpu;
    let model = Model::random(config, 7, &dev, DType::F64).unwrap();
    let grads: GradStore = loss(&model).backward().unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let h = 1e-6;
    for (name, var) in model.named_vars() {
        let grad = grads
            .get(var)
            .unwrap_or_else(|| panic!("{name} got no gradient"));
        let grad: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            grad.iter().any(|g| *g != 0.0),
            "{name}: gradient is all zeros"
        );
        let original = var.as_tensor().copy().unwrap();
        let values: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
        for _ in 0..3 {
            let i = rng.random_range(0..values.len());
            let at = |delta: f64| {
                let mut v = values.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, original.shape(), &dev).unwrap())
                    .unwrap();
                scalar(&loss(&model))
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            var.set(&original).unwrap();
            // Relative error, floored for near-zero gradients, where central differences
            // carry ~1e-10 of rounding noise.
            let err = (numeric - grad[i]).abs() / numeric.abs().max(grad[i].abs()).max(1e-3);
            assert!(
                err < 1e-5,
                "{name}[{i}]: analytic {} vs numeric {numeric} (rel err {err:.2e})",
                grad[i]
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences_qwen2_untied() {
    check_gradients(tiny(Architecture::Qwen2, false), next_token_loss);
}

#[test]
fn gradients_match_finite_differences_llama_tied() {
    check_gradients(tiny(Architecture::Llama, true), next_token_loss);
}

/// The scoring path's log-probs and entropies (values from a pass without graph, gradients
/// through surrogates) differentiate like the plain log-softmax.
#[test]
fn scored_logprobs_and_entropy_have_exact_gradients() {
    use crate::model::logprobs::{score, Entropy, Scored};
    let loss = |model: &Model| {
        let batch = [
            Scored {
                prompt: &[3, 5, 7],
                completion: &[2, 9, 4],
            },
            Scored {
                prompt: &[1],
                completion: &[6, 8],
            },
            // Shares the first one's prompt, so the two share a row.
            Scored {
                prompt: &[3, 5, 7],
                completion: &[8, 1],
            },
        ];
        let s = score(model, &batch, 0.7, Grad::Graph, Entropy::WithGrad).unwrap();
        let weights =
            Tensor::new(&[1.0f64, -0.5, 0.3, 2.0, 0.7, -1.2, 0.4], model.device()).unwrap();
        let logp = (s.logprobs.to_dtype(DType::F64).unwrap() * &weights).unwrap();
        let h = s.entropy.unwrap().to_dtype(DType::F64).unwrap();
        (logp.sum_all().unwrap() + (h.sum_all().unwrap() * 0.5).unwrap()).unwrap()
    };
    check_gradients(tiny(Architecture::Qwen2, false), loss);
}

use crate::kernels::max_abs_diff as max_diff;

/// Completions of one prompt share a row of the scoring pass, yet each gets the log-probs and
/// gradients it gets when scored alone.
#[test]
fn shared_prompts_score_as_they_would_alone() {
    use crate::model::logprobs::{pass_size, score, Entropy, Scored};
    let model = Model::random(
        tiny(Architecture::Qwen2, false),
        3,
        &Device::Cpu,
        DType::F64,
    )
    .unwrap();
    let (a, b): (&[u32], &[u32]) = (&[3, 5, 7, 1], &[2, 6]);
    let batch = [
        Scored {
            prompt: a,
            completion: &[2, 9, 4],
        },
        Scored {
            prompt: b,
            completion: &[6, 8, 8, 3, 1],
        },
        Scored {
            prompt: a,
            completion: &[8],
        },
        Scored {
            prompt: a,
            completion: &[4, 4, 10, 2],
        },
    ];
    // Two rows (a + 8 completion tokens, b + 5), as wide as the first.
    assert_eq!(pass_size(&batch), 2 * 12);
    let packed = score(&model, &batch, 0.8, Grad::Graph, Entropy::Value).unwrap();
    let alone: Vec<_> = batch
        .iter()
        .map(|s| {
            score(
                &model,
                std::slice::from_ref(s),
                0.8,
                Grad::Graph,
                Entropy::Value,
            )
            .unwrap()
        })
        .collect();
    let cat = |f: &dyn Fn(&crate::model::logprobs::TokenScores) -> Tensor| {
        Tensor::cat(&alone.iter().map(f).collect::<Vec<_>>(), 0).unwrap()
    };
    let logp = cat(&|s| s.logprobs.clone());
    assert!(max_diff(&packed.logprobs, &logp) < 1e-5);
    let entropy = cat(&|s| s.entropy.clone().unwrap());
    assert!(max_diff(packed.entropy.as_ref().unwrap(), &entropy) < 1e-5);
    let weights = Tensor::arange(0.0f64, 13.0, &Device::Cpu)
        .unwrap()
        .cos()
        .unwrap();
    let objective = |logp: &Tensor| (logp * &weights).unwrap().sum_all().unwrap();
    let packed_grads = objective(&packed.logprobs).backward().unwrap();
    let alone_grads = objective(&logp).backward().unwrap();
    for (name, var) in model.named_vars() {
        let (p, s) = (packed_grads.get(var), alone_grads.get(var));
        let (p, s) = (p.expect(&name), s.expect(&name));
        assert!(max_diff(p, s) < 1e-5, "{name}: {}", max_diff(p, s));
    }
}

/// Gradients summed over two scoring passes with the matrices' accumulators (what the update
/// does on the CPU) equal those summed from plain backward passes (checked against finite
/// differences above), in f64 and f32, tied and untied, with the entropy's surrogate too.
#[test]
fn accumulated_matrix_gradients_match_backward() {
    use crate::model::logprobs::{score, Entropy, Scored};
    let passes: [&[Scored]; 2] = [
        &[
            Scored {
                prompt: &[3, 5, 7],
                completion: &[2, 9, 4],
            },
            Scored {
                prompt: &[3, 5, 7],
                completion: &[8, 1],
            },
        ],
        &[Scored {
            prompt: &[1, 7],
            completion: &[6, 8, 8],
        }],
    ];
    // Entropy as a metric takes the head softmax's fused path; with its gradient, the composed one.
    for (arch, tied, dtype, tol, entropy) in [
        (
            Architecture::Qwen2,
            false,
            DType::F64,
            1e-12,
            Entropy::WithGrad,
        ),
        (
            Architecture::Llama,
            true,
            DType::F64,
            1e-12,
            Entropy::WithGrad,
        ),
        (
            Architecture::Qwen2,
            false,
            DType::F64,
            1e-12,
            Entropy::Value,
        ),
        (Architecture::Llama, true, DType::F64, 1e-12, Entropy::Value),
        (Architecture::Qwen2, true, DType::F32, 1e-5, Entropy::Value),
    ] {
        let model = Model::random(tiny(arch, tied), 11, &Device::Cpu, dtype).unwrap();
        let named = model.named_vars();
        let params: Vec<&Var> = named.iter().map(|(_, v)| *v).collect();
        let backward = |batch: &[Scored], grad: Grad| {
            let s = score(&model, batch, 0.9, grad, entropy).unwrap();
            let n = s.logprobs.dim(0).unwrap();
            let weights = Tensor::arange(0.0, n as f64, &Device::Cpu)
                .unwrap()
                .sin()
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let h = (s.entropy.unwrap().sum_all().unwrap() * 0.3).unwrap();
            let loss = ((s.logprobs * weights).unwrap().sum_all().unwrap() + h).unwrap();
            loss.backward().unwrap()
        };
        let sinks = WeightGrads::new(&params, crate::model::Products::F32)
            .unwrap()
            .expect("CPU float");
        let mut accumulated = backward(passes[0], Grad::Into(&sinks));
        crate::rl::optim::accumulate(
            &mut accumulated,
            &backward(passes[1], Grad::Into(&sinks)),
            &params,
        )
        .unwrap();
        for (name, var) in &named {
            assert_eq!(
                accumulated.get(var).is_some(),
                var.rank() != 2,
                "{name}: a matrix's gradient leaves backward only through its accumulator"
            );
        }
        sinks.add_to(&mut accumulated).unwrap();
        let mut plain = backward(passes[0], Grad::Graph);
        crate::rl::optim::accumulate(&mut plain, &backward(passes[1], Grad::Graph), &params)
            .unwrap();
        for (name, var) in &named {
            let f64s = |t: &Tensor| -> Vec<f64> {
                t.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let (a, p) = (
                f64s(accumulated.get(var).unwrap()),
                f64s(plain.get(var).unwrap()),
            );
            let scale = p.iter().fold(0f64, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "{name}: no gradient");
            let d = a
                .iter()
                .zip(&p)
                .fold(0f64, |m, (a, p)| m.max((a - p).abs()))
                / scale;
            assert!(
                d < tol,
                "{arch:?} tied={tied} {dtype:?} {name}: rel diff {d:.2e}"
            );
        }
    }
}

#[test]
fn cached_decoding_matches_the_full_forward() {
    let dev = Device::Cpu;
    let model = Model::random(tiny(Architecture::Qwen2, false), 3, &dev, DType::F32).unwrap();
    let tokens = ids(&[&[0, 0, 4, 2, 9, 1, 5], &[3, 5, 7, 2, 9, 4, 6]], &dev);
    let mask = ids(&[&[0, 0, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 1, 1]], &dev);
    let full = model
        .logits(&model.forward(&tokens, Some(&mask), None, true).unwrap())
        .unwrap();
    let mut cache = KvCache::default();
    let prefix = model
        .forward(
            &tokens.narrow(1, 0, 4).unwrap(),
            Some(&mask.narrow(1, 0, 4).unwrap()),
            Some(&mut cache),
            false,
        )
        .unwrap();
    // Row 0's first two columns are padding, whose outputs are garbage by design: compare the rest.
    let real = |t: &Tensor| t.narrow(1, 2, 2).unwrap();
    assert!(
        max_diff(
            &real(&model.logits(&prefix).unwrap()),
            &real(&full.narrow(1, 0, 4).unwrap())
        ) < 1e-5
    );
    for step in 4..7 {
        let h = model
            .forward(
                &tokens.narrow(1, step, 1).unwrap(),
                Some(&mask.narrow(1, 0, step + 1).unwrap()),
                Some(&mut cache),
                false,
            )
            .unwrap();
        let d = max_diff(
            &model.logits(&h).unwrap(),
            &full.narrow(1, step, 1).unwrap(),
        );
        assert!(d < 1e-5, "step {step}: {d}");
    }
    assert_eq!(cache.len(), 7);
}

#[test]
fn left_padding_does_not_change_real_positions() {
    let dev = Device::Cpu;
    let model = Model::random(tiny(Architecture::Llama, true), 5, &dev, DType::F32).unwrap();
    let alone = model
        .logits(
            &model
                .forward(&ids(&[&[4, 2, 9]], &dev), None, None, false)
                .unwrap(),
        )
        .unwrap();
    let padded = model
        .logits(
            &model
                .forward(
                    &ids(&[&[0, 0, 4, 2, 9]], &dev),
                    Some(&ids(&[&[0, 0, 1, 1, 1]], &dev)),
                    None,
                    false,
                )
                .unwrap(),
        )
        .unwrap();
    assert!(max_diff(&alone, &padded.narrow(1, 2, 3).unwrap()) < 1e-5);
}

#[test]
fn save_and_load_round_trip() {
    let dev = Device::Cpu;
    let model = Model::random(tiny(Architecture::Qwen2, false), 9, &dev, DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let back = Model::load(dir.path(), &dev, DType::F32).unwrap();
    let x = ids(&[&[1, 2, 3]], &dev);
    let a = model
        .logits(&model.forward(&x, None, None, false).unwrap())
        .unwrap();
    let b = back
        .logits(&back.forward(&x, None, None, false).unwrap())
        .unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
    assert_eq!(back.config.hidden_size, 8);
    // The file holds the HF layout, (out, in).
    let saved = candle_core::safetensors::load(dir.path().join("model.safetensors"), &dev).unwrap();
    let c = &model.config;
    let gate = &saved["model.layers.0.mlp.gate_proj.weight"];
    assert_eq!(gate.dims(), &[c.intermediate_size, c.hidden_size]);
    let k = &saved["model.layers.0.self_attn.k_proj.weight"];
    assert_eq!(
        k.dims(),
        &[c.num_key_value_heads * c.head_dim(), c.hidden_size]
    );
}

/// Issue 19: a config.json claiming 4 layers of a 30-layer model loaded and wrote garbage.
#[test]
fn a_config_that_disagrees_with_the_weights_is_refused() {
    let dev = Device::Cpu;
    let model = Model::random(tiny(Architecture::Qwen2, false), 9, &dev, DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let path = dir.path().join("config.json");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = [
        ("num_hidden_layers", serde_json::json!(1), "model.layers.1."),
        ("num_hidden_layers", serde_json::json!(3), "model.layers.2."),
        (
            "intermediate_size",
            serde_json::json!(16),
            "has shape [12, 8]",
        ),
        (
            "max_position_embeddings",
            serde_json::json!(1_000_000_000_000u64),
            "max_position_embeddings",
        ),
        ("rope_theta", serde_json::json!(-1.0), "rope_theta"),
    ];
    for (key, value, says) in cases {
        let mut config = saved.clone();
        config[key] = value.clone();
        std::fs::write(&path, config.to_string()).unwrap();
        let err = match Model::load(dir.path(), &dev, DType::F32) {
            Ok(_) => panic!("{key} = {value} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(says), "{key} = {value}: {err}");
    }
}

/// Tensors outside the layers that a model does not use (a saved rotary buffer, a spare
/// `lm_head.weight` next to tied embeddings) are left out, as other loaders do.
#[test]
fn unused_tensors_outside_the_layers_are_ignored() {
    let dev = Device::Cpu;
    let model = Model::random(tiny(Architecture::Qwen2, true), 9, &dev, DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let weights = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &dev).unwrap();
    let embed = tensors["model.embed_tokens.weight"].clone();
    tensors.insert("lm_head.weight".into(), embed);
    tensors.insert(
        "model.rotary_emb.inv_freq".into(),
        Tensor::ones(4, DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    Model::load(dir.path(), &dev, DType::F32).unwrap();
}

#[cfg(feature = "cuda")]
mod cuda;
