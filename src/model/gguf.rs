//! GGUF -> Hugging Face folder: dequantised weights in `model.safetensors` under HF tensor
//! names, `config.json`, `generation_config.json`, and `tokenizer.json` plus
//! `tokenizer_config.json` (with the chat template) rebuilt from the GGUF's vocabulary metadata.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::config::{Architecture, EosIds, ModelConfig};
use super::ModelError;

/// The split regex of Qwen2's tokenizer (`tokenizer.ggml.pre = qwen2`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

struct Gguf {
    content: Content,
    path: std::path::PathBuf,
}

impl Gguf {
    fn invalid(&self, detail: impl Into<String>) -> ModelError {
        ModelError::Invalid {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn value(&self, key: &str) -> Result<&Value, ModelError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.invalid(format!("metadata key {key} is missing")))
    }

    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        let v = self.value(key)?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .or_else(|_| v.to_i32().map(|x| x as usize))
            .map_err(|e| self.invalid(format!("{key}: {e}")))
    }

    fn f64_or(&self, key: &str, default: f64) -> f64 {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_f32().ok())
            .map_or(default, f64::from)
    }

    fn string(&self, key: &str) -> Result<&str, ModelError> {
        self.value(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| self.invalid(format!("{key}: {e}")))
    }

    fn strings(&self, key: &str) -> Result<Vec<&str>, ModelError> {
        let values = self
            .value(key)?
            .to_vec()
            .map_err(|e| self.invalid(format!("{key}: {e}")))?;
        values
            .iter()
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|e| self.invalid(format!("{key}: {e}")))
            })
            .collect()
    }

    fn token_id(&self, key: &str) -> Option<u32> {
        self.content.metadata.get(key).and_then(|v| v.to_u32().ok())
    }
}

/// Reads the GGUF at `gguf` and writes a Hugging Face folder into `out` (which must exist).
/// Weights are written as `dtype` (F32 or BF16).
pub fn import(gguf: &Path, out: &Path, dtype: DType) -> Result<ModelConfig, ModelError> {
    let file = File::open(gguf).map_err(|e| ModelError::io(gguf, e))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| ModelError::Invalid {
        path: gguf.to_owned(),
        detail: format!("not a readable GGUF file: {e}"),
    })?;
    let g = Gguf {
        content,
        path: gguf.to_owned(),
    };
    let arch = match g.string("general.architecture")? {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        other => {
            return Err(g.invalid(format!(
                "architecture `{other}` is not supported (supported: qwen2, llama)"
            )))
        }
    };
    let prefix = if arch == Architecture::Llama {
        "llama"
    } else {
        "qwen2"
    };
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let has_output = g.content.tensor_infos.contains_key("output.weight");
    let eos = g.token_id("tokenizer.ggml.eos_token_id");
    let config = ModelConfig {
        model_type: arch,
        hidden_size: g.usize(&format!("{prefix}.embedding_length"))?,
        intermediate_size: g.usize(&format!("{prefix}.feed_forward_length"))?,
        num_hidden_layers: g.usize(&format!("{prefix}.block_count"))?,
        num_attention_heads: g.usize(&format!("{prefix}.attention.head_count"))?,
        num_key_value_heads: g.usize(&format!("{prefix}.attention.head_count_kv"))?,
        vocab_size: tokens.len(),
        rms_norm_eps: g.f64_or(&format!("{prefix}.attention.layer_norm_rms_epsilon"), 1e-6),
        rope_theta: g.f64_or(&format!("{prefix}.rope.freq_base"), 10_000.0),
        max_position_embeddings: g.usize(&format!("{prefix}.context_length"))?,
        tie_word_embeddings: !has_output,
        attention_bias: arch == Architecture::Qwen2,
        bos_token_id: g.token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id: eos.map(EosIds::One),
        extra: serde_json::Map::new(),
    };
    config.validate().map_err(|d| g.invalid(d))?;

    let tensors = convert_tensors(&g, &mut reader, &config, dtype)?;
    let weights = out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights)
        .map_err(|e| ModelError::candle(&weights, e))?;
    write_config(out, &config, dtype)?;
    write_tokenizer(&g, out, &tokens, &config)?;
    Ok(config)
}

/// GGUF tensor name -> HF name.
fn hf_name(name: &str) -> Option<String> {
    let direct = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = direct {
        return Some(n.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let module = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.{kind}"))
}

/// llama.cpp stores llama's q/k rows interleaved for its RoPE; HF rotates halves. Undo it.
fn unpermute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let shape = w.dims().to_vec();
    let rows = shape[0];
    let rest: usize = shape[1..].iter().product();
    let head_dim = rows / heads;
    w.reshape((heads, head_dim / 2, 2, rest))?
        .transpose(1, 2)?
        .reshape(shape)
}

fn convert_tensors(
    g: &Gguf,
    reader: &mut BufReader<File>,
    config: &ModelConfig,
    dtype: DType,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let device = Device::Cpu;
    let mut names: Vec<&String> = g.content.tensor_infos.keys().collect();
    names.sort();
    let mut out = HashMap::new();
    for name in names {
        let Some(hf) = hf_name(name) else {
            tracing::debug!(%name, "skipping tensor with no HF counterpart");
            continue;
        };
        let candle = |e| ModelError::candle(&g.path, e);
        let mut t = g
            .content
            .tensor(reader, name, &device)
            .and_then(|q| q.dequantize(&device))
            .map_err(candle)?;
        if config.model_type == Architecture::Llama {
            if name.ends_with("attn_q.weight") {
                t = unpermute(&t, config.num_attention_heads).map_err(candle)?;
            } else if name.ends_with("attn_k.weight") {
                t = unpermute(&t, config.num_key_value_heads).map_err(candle)?;
            }
        }
        out.insert(hf, t.to_dtype(dtype).map_err(candle)?);
    }
    if !out.contains_key("model.embed_tokens.weight") {
        return Err(g.invalid("no token_embd.weight tensor"));
    }
    Ok(out)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(value).expect("json serialises");
    std::fs::write(path, text).map_err(|e| ModelError::io(path, e))
}

fn write_config(out: &Path, config: &ModelConfig, dtype: DType) -> Result<(), ModelError> {
    let mut value = serde_json::to_value(config).expect("config serialises");
    let object = value.as_object_mut().expect("config is an object");
    object.insert("architectures".into(), json!([config.hf_architecture()]));
    object.insert("hidden_act".into(), json!("silu"));
    object.insert("head_dim".into(), json!(config.head_dim()));
    object.insert(
        "torch_dtype".into(),
        json!(if dtype == DType::BF16 {
            "bfloat16"
        } else {
            "float32"
        }),
    );
    write_json(&out.join("config.json"), &value)?;
    write_json(
        &out.join("generation_config.json"),
        &json!({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}),
    )
}

fn write_tokenizer(
    g: &Gguf,
    out: &Path,
    tokens: &[&str],
    config: &ModelConfig,
) -> Result<(), ModelError> {
    let model = g.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(g.invalid(format!(
            "tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
        )));
    }
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = g
        .strings("tokenizer.ggml.merges")?
        .iter()
        .filter_map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| g.invalid(format!("building the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = g.string("tokenizer.ggml.pre").unwrap_or("default");
    match pre {
        "qwen2" => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| g.invalid(format!("qwen2 split regex: {e}")))?;
            tokenizer
                .with_normalizer(Some(NFC))
                .map_err(|e| g.invalid(e.to_string()))?;
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
            ])));
        }
        "smollm" => {
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
            ])));
        }
        _ => {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    tokenizer.with_decoder(Some(ByteLevel::default()));
    // Token types: 3 = control (special), 4 = user-defined (added, not special).
    let types: Vec<i64> = g
        .value("tokenizer.ggml.token_type")?
        .to_vec()
        .map_err(|e| g.invalid(e.to_string()))?
        .iter()
        .map(|v| v.to_i32().map(i64::from).unwrap_or(1))
        .collect();
    let added = |kind: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == kind)
            .map(|(tok, _)| AddedToken::from(tok.to_string(), special).normalized(!special))
            .collect()
    };
    tokenizer
        .add_special_tokens(added(3, true))
        .map_err(|e| g.invalid(e.to_string()))?;
    tokenizer
        .add_tokens(added(4, false))
        .map_err(|e| g.invalid(e.to_string()))?;
    let path = out.join("tokenizer.json");
    tokenizer
        .save(&path, false)
        .map_err(|e| g.invalid(format!("writing {}: {e}", path.display())))?;

    let token = |id: Option<u32>| {
        id.and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let mut tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(config.bos_token_id),
        "eos_token": token(config.eos_ids().first().copied()),
        "pad_token": token(g.token_id("tokenizer.ggml.padding_token_id")),
        "add_bos_token": g.content.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false),
        "model_max_length": config.max_position_embeddings,
    });
    if let Ok(template) = g.string("tokenizer.chat_template") {
        tokenizer_config["chat_template"] = json!(template);
    }
    write_json(&out.join("tokenizer_config.json"), &tokenizer_config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_map_to_hf() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias").unwrap(),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("blk.12.ffn_down.weight").unwrap(),
            "model.layers.12.mlp.down_proj.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_restores_rotate_half_order() {
        // One head of dim 4 over one input: llama.cpp rows [a0, b0, a1, b1] -> HF [a0, a1, b0, b1].
        let w = Tensor::new(&[[0f32], [10.], [1.], [11.]], &Device::Cpu).unwrap();
        let hf = unpermute(&w, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(hf, [0., 1., 10., 11.]);
    }
}
