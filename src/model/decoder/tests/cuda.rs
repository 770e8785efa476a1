//! The CUDA path against the CPU path on the same random model and inputs (only in builds with
//! `--features cuda`, and only on a machine with a GPU: these fail without one).

use super::*;

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need an NVIDIA GPU (cargo test --features cuda)")
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let b = b.to_device(a.device()).unwrap();
    let scale = b
        .to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-6);
    max_diff(
        &a.to_dtype(DType::F32).unwrap(),
        &b.to_dtype(DType::F32).unwrap(),
    ) / scale
}

/// Loss and every parameter's gradient, through the training path (azr's attention op that
/// recomputes its probabilities in backward, composed RMSNorm and RoPE), in f32 on both devices.
#[test]
fn gradients_on_the_gpu_match_the_cpu() {
    for (arch, tied) in [(Architecture::Qwen2, false), (Architecture::Llama, true)] {
        let run = |dev: &Device| {
            let model = Model::random(tiny(arch, tied), 11, dev, DType::F32).unwrap();
            let tokens = ids(&[&[3, 5, 7, 2, 9, 4], &[0, 0, 1, 6, 8, 10]], dev);
            let mask = ids(&[&[1, 1, 1, 1, 1, 1], &[0, 0, 1, 1, 1, 1]], dev);
            let loss = loss(&model, &tokens, &mask);
            let grads = loss.backward().unwrap();
            let grads: Vec<(String, Tensor)> = model
                .named_vars()
                .into_iter()
                .map(|(name, v)| {
                    let g = grads
                        .get(v)
                        .unwrap_or_else(|| panic!("{name}: no gradient"));
                    (name, g.to_device(&Device::Cpu).unwrap())
                })
                .collect();
            (scalar(&loss), grads)
        };
        let (cpu_loss, cpu_grads) = run(&Device::Cpu);
        let (gpu_loss, gpu_grads) = run(&gpu());
        assert!(
            (cpu_loss - gpu_loss).abs() < 1e-5 * cpu_loss.abs().max(1.0),
            "{arch:?}: loss {cpu_loss} on the CPU, {gpu_loss} on the GPU"
        );
        for ((name, c), (_, g)) in cpu_grads.iter().zip(&gpu_grads) {
            let err = rel_err(g, c);
            assert!(err < 1e-4, "{arch:?} {name}: gradient rel err {err:.2e}");
        }
    }
}

/// The generation path (candle's fused kernels, KV cache) in f32 matches the CPU closely, and
/// in bf16 within bf16's precision.
#[test]
fn cached_logits_on_the_gpu_match_the_cpu() {
    let tokens = |dev: &Device| ids(&[&[0, 0, 4, 2, 9, 1, 5], &[3, 5, 7, 2, 9, 4, 6]], dev);
    let mask = |dev: &Device| ids(&[&[0, 0, 1, 1, 1, 1, 1], &[1, 1, 1, 1, 1, 1, 1]], dev);
    let logits = |dev: &Device, dtype: DType| {
        let model = Model::random(tiny(Architecture::Qwen2, false), 3, dev, dtype).unwrap();
        let mut cache = KvCache::default();
        let (t, m) = (tokens(dev), mask(dev));
        let prefix = model
            .forward(
                &t.narrow(1, 0, 5).unwrap(),
                Some(&m.narrow(1, 0, 5).unwrap()),
                Some(&mut cache),
                false,
            )
            .unwrap();
        let next = model
            .forward(
                &t.narrow(1, 5, 2).unwrap(),
                Some(&m),
                Some(&mut cache),
                false,
            )
            .unwrap();
        let hidden = Tensor::cat(&[prefix, next], 1).unwrap();
        model
            .logits(&hidden)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
    };
    let cpu = logits(&Device::Cpu, DType::F32);
    let f32_err = rel_err(&logits(&gpu(), DType::F32), &cpu);
    assert!(f32_err < 1e-4, "f32 logits rel err {f32_err:.2e}");
    let bf16_err = rel_err(&logits(&gpu(), DType::BF16), &cpu);
    assert!(bf16_err < 5e-2, "bf16 logits rel err {bf16_err:.2e}");
}
