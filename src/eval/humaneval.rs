//! HumanEval (Chen et al., 2021): 164 functions to complete from a signature and docstring,
//! checked by the task's `check(candidate)`. The data ships in `datasets/humaneval.jsonl.gz`.

use std::io::Read;

use serde::Deserialize;

use super::{Check, Problem};

const DATA: &[u8] = include_bytes!("../../datasets/humaneval.jsonl.gz");

#[derive(Deserialize)]
struct Row {
    task_id: String,
    prompt: String,
    test: String,
    entry_point: String,
}

pub(super) fn problems() -> Vec<Problem> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DATA)
        .read_to_string(&mut text)
        .expect("datasets/humaneval.jsonl.gz is valid gzip");
    text.lines()
        .map(|line| {
            let row: Row = serde_json::from_str(line).expect("HumanEval rows are valid JSON");
            Problem {
                task_id: row.task_id,
                instruction: format!(
                    "Complete the following Python function.\n\n```python\n{}```",
                    row.prompt
                ),
                prefix: format!("```python\n{}", row.prompt),
                // The official harness's program, byte for byte.
                check: Check::Program {
                    tail: format!("\n{}\ncheck({})", row.test, row.entry_point),
                    head: row.prompt,
                },
            }
        })
        .collect()
}
