//! MBPP (Austin et al., 2021): short functions described in a sentence, each with three
//! asserts. The usual test split is tasks 11-510; the prompt shows the first assert, the check
//! runs all of them. The data ships in `datasets/mbpp.jsonl`.

use serde::Deserialize;

use super::{Check, Problem};

const DATA: &str = include_str!("../../datasets/mbpp.jsonl");

/// The test split.
const TEST: std::ops::RangeInclusive<u32> = 11..=510;

#[derive(Deserialize)]
struct Row {
    task_id: u32,
    text: String,
    test_setup_code: String,
    test_list: Vec<String>,
}

pub(super) fn problems() -> Vec<Problem> {
    DATA.lines()
        .map(|line| serde_json::from_str::<Row>(line).expect("MBPP rows are valid JSON"))
        .filter(|row| TEST.contains(&row.task_id))
        .map(|row| Problem {
            task_id: format!("Mbpp/{}", row.task_id),
            instruction: format!(
                "You are an expert Python programmer, and here is your task: {} \
                 Your code should pass this test:\n\n```python\n{}\n```",
                row.text.trim(),
                row.test_list[0]
            ),
            prefix: "```python\n".into(),
            // Setup code (two tasks have some) uses the solution's classes, so it comes after.
            check: Check::Program {
                head: String::new(),
                tail: format!("\n{}\n{}\n", row.test_setup_code, row.test_list.join("\n")),
            },
        })
        .collect()
}
