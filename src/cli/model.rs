//! `azr model import|info` and `azr generate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use candle_core::DType;
use clap::Subcommand;

use azr::generate::{self, GenerateConfig};
use azr::model::{gguf, provision, DeviceSpec, Model, ModelConfig, Precision, TextTokenizer};
use azr::tasks::chat;
use azr::tasks::prompts::ChatPrompt;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Convert a GGUF file (qwen2 or llama) into a Hugging Face folder.
    Import {
        /// The .gguf file.
        file: PathBuf,
        /// The folder to create.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Store weights as bf16 instead of f32.
        #[arg(long)]
        bf16: bool,
    },
    /// Print a model's architecture, size, dtype, vocabulary and context.
    Info {
        /// A model folder or a known model name.
        model: String,
    },
}

/// `azr generate`: a quick look at what a model writes.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// A model folder or a known model name (fetched on first use).
    #[arg(long, default_value = "smollm2-135m-instruct")]
    model: String,
    /// The user message (wrapped in the model's chat template unless --raw).
    #[arg(long)]
    prompt: String,
    /// Feed the prompt as it is, without the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 for greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Decode with bf16 copies of the weights (CPUs with AVX-512; faster, within bf16
    /// rounding of f32).
    #[arg(long)]
    bf16_decode: bool,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: DeviceSpec,
}

pub fn model_dir(name_or_dir: &str) -> anyhow::Result<PathBuf> {
    Ok(provision::resolve(&azr::assets::home(), name_or_dir)?)
}

fn dtype_name(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["torch_dtype"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelCommand::Import { file, out, bf16 } => {
            anyhow::ensure!(
                !out.exists(),
                "{} already exists; choose another --out or remove it",
                out.display()
            );
            let dtype = if bf16 { DType::BF16 } else { DType::F32 };
            azr::assets::fetch::install_once(&out, |tmp| {
                std::fs::create_dir_all(tmp).map_err(|e| azr::model::ModelError::Io {
                    path: tmp.to_owned(),
                    source: e,
                })?;
                gguf::import(&file, tmp, dtype).map(|_| ())
            })
            .with_context(|| format!("importing {}", file.display()))?;
            println!("wrote {}", out.display());
            info(&out)
        }
        ModelCommand::Info { model } => info(&model_dir(&model)?),
    }
}

fn info(dir: &Path) -> anyhow::Result<ExitCode> {
    let c = ModelConfig::load(dir)?;
    println!("folder        {}", dir.display());
    println!("architecture  {:?} ({})", c.model_type, c.hf_architecture());
    println!("parameters    {:.1} M", c.parameter_count() as f64 / 1e6);
    println!("dtype         {}", dtype_name(dir));
    println!(
        "layers        {} (hidden {}, MLP {})",
        c.num_hidden_layers, c.hidden_size, c.intermediate_size
    );
    println!(
        "attention     {} heads, {} kv heads, head dim {}",
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim()
    );
    println!("vocabulary    {}", c.vocab_size);
    println!("context       {}", c.max_position_embeddings);
    println!("tied head     {}", c.tie_word_embeddings);
    Ok(ExitCode::SUCCESS)
}

pub fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let device = args.device.open()?;
    let dir = model_dir(&args.model)?;
    let model = Model::load(&dir, &device, Precision::Auto.dtype(&device))?;
    let tokenizer = TextTokenizer::load(&dir, &model.config.eos_ids())?;
    let text = match (args.raw, tokenizer.chat_template()) {
        (false, Some(template)) => chat::apply_template(
            template,
            &ChatPrompt {
                system: String::new(),
                shots: Vec::new(),
                user: args.prompt.clone(),
            },
        )?,
        _ => args.prompt.clone(),
    };
    let prompt = tokenizer.encode(&text)?;
    let config = GenerateConfig {
        max_new_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop: Vec::new(),
        stop_after: None,
        bf16_decode: args.bf16_decode,
    };
    let started = std::time::Instant::now();
    let out = generate::generate(&model, &tokenizer, &[prompt], &config)?.remove(0);
    let elapsed = started.elapsed();
    println!("{}", out.text);
    eprintln!(
        "azr: {} tokens in {:.2?} ({:.1} tok/s, {:?})",
        out.tokens.len(),
        elapsed,
        out.tokens.len() as f64 / elapsed.as_secs_f64(),
        out.finish
    );
    Ok(ExitCode::SUCCESS)
}
