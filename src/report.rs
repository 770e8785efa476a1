//! `azr report`: PNG plots of a run's `metrics.jsonl`, one chart per question a user asks of a
//! run: is the solver getting better, are proposals valid and learnable, is the buffer growing,
//! how long are the responses, how fast is it, is the update healthy.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {0}: {1} (is this a run directory? a run writes metrics.jsonl after its first step)")]
    Read(PathBuf, std::io::Error),
    #[error("{path} line {line}: {detail}")]
    Parse {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("{0} holds no steps yet")]
    Empty(PathBuf),
    #[error("drawing {0}: {1}")]
    Draw(PathBuf, String),
}

/// A metric: a label and the JSON path of its value in a step's metrics.
type Series = (&'static str, &'static [&'static str]);

/// One chart per file: (file, title, y label, series).
const CHARTS: &[(&str, &str, &str, &[Series])] = &[
    (
        "solver_accuracy.png",
        "Solver accuracy per task type",
        "fraction correct",
        &[
            ("deduction", &["deduction", "@accuracy"]),
            ("abduction", &["abduction", "@accuracy"]),
            ("induction", &["induction", "@accuracy"]),
        ],
    ),
    (
        "valid_proposals.png",
        "Valid proposals per task type",
        "fraction valid",
        &[
            ("deduction", &["deduction", "@validity"]),
            ("abduction", &["abduction", "@validity"]),
            ("induction", &["induction", "@validity"]),
        ],
    ),
    (
        "learnability.png",
        "Proposer reward (learnability) per task type",
        "mean over valid proposals",
        &[
            ("deduction", &["deduction", "mean_learnability"]),
            ("abduction", &["abduction", "mean_learnability"]),
            ("induction", &["induction", "mean_learnability"]),
        ],
    ),
    (
        "rewards.png",
        "Mean reward per task type x role",
        "reward",
        &[
            ("deduction proposer", &["update", "@group", "0"]),
            ("deduction solver", &["update", "@group", "1"]),
            ("abduction proposer", &["update", "@group", "2"]),
            ("abduction solver", &["update", "@group", "3"]),
            ("induction proposer", &["update", "@group", "4"]),
            ("induction solver", &["update", "@group", "5"]),
        ],
    ),
    (
        "buffer.png",
        "Tasks in the buffer",
        "tasks",
        &[("tasks", &["buffer_size"])],
    ),
    (
        "response_length.png",
        "Mean response length",
        "tokens",
        &[
            ("proposals", &["mean_proposal_tokens"]),
            ("answers", &["mean_answer_tokens"]),
        ],
    ),
    (
        "throughput.png",
        "Throughput",
        "tokens / s",
        &[
            ("generation", &["generate_tokens_per_sec"]),
            ("update", &["update", "tokens_per_sec"]),
        ],
    ),
    (
        "update.png",
        "Policy update",
        "value",
        &[
            ("loss", &["update", "loss"]),
            ("grad norm", &["update", "grad_norm"]),
            ("entropy", &["update", "entropy"]),
            ("approx KL", &["update", "approx_kl"]),
        ],
    ),
    (
        "validation.png",
        "CRUXEval accuracy (greedy, fixed subset)",
        "fraction correct",
        &[
            ("CRUXEval-O", &["validation", "cruxeval_o"]),
            ("CRUXEval-I", &["validation", "cruxeval_i"]),
        ],
    ),
];

/// The value at `path` in one step's metrics, as (numerator, denominator) so windows of steps
/// pool their counts: `@accuracy` and `@validity` are ratios of counts, `@group` a group's
/// reward, `@rejected` the share of proposals rejected for a reason; other paths are plain
/// values (denominator 1).
fn lookup(step: &Value, path: &[&str]) -> Option<(f64, f64)> {
    let ratio = |v: &Value, n: &str, d: &str| {
        let d = v[d].as_f64()?;
        (d > 0.0).then(|| (v[n].as_f64().unwrap_or(0.0), d))
    };
    match path {
        [t, "@accuracy"] => ratio(&step[*t], "solver_correct", "solver_answers"),
        [t, "@validity"] => ratio(&step[*t], "valid_proposals", "proposals"),
        ["@rejected", kind] => {
            let total: f64 = ["deduction", "abduction", "induction"]
                .iter()
                .filter_map(|t| step[*t]["proposals"].as_f64())
                .sum();
            let n = step["rejections"][*kind].as_f64().unwrap_or(0.0);
            (total > 0.0).then_some((n, total))
        }
        [u, "@group", g] => step[*u]["groups"]
            .as_array()?
            .iter()
            .find(|x| x["group"].as_u64().map(|id| id.to_string()).as_deref() == Some(g))?
            ["reward_mean"]
            .as_f64()
            .map(|r| (r, 1.0)),
        _ => path
            .iter()
            .try_fold(step, |v, k| v.get(*k))?
            .as_f64()
            .map(|v| (v, 1.0)),
    }
}

/// One point per window of `window` steps (at its last step): the pooled ratio of the
/// window's (numerator, denominator) pairs. Windows without data give no point.
fn windowed(steps: &[Value], path: &[&str], window: usize) -> Vec<(f64, f64)> {
    steps
        .chunks(window.max(1))
        .filter_map(|chunk| {
            let x = chunk.last()?["step"].as_f64()?;
            let pairs: Vec<(f64, f64)> = chunk
                .iter()
                .filter_map(|s| lookup(s, path))
                .filter(|(n, d)| n.is_finite() && d.is_finite())
                .collect();
            let d: f64 = pairs.iter().map(|(_, d)| d).sum();
            // Dividing before adding keeps a window of values near f64::MAX finite.
            (d > 0.0).then(|| (x, pairs.iter().map(|(n, _)| n / d).sum()))
        })
        .collect()
}

/// Reads `metrics.jsonl` of a run.
pub fn read_metrics(run: &Path) -> Result<Vec<Value>, ReportError> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| ReportError::Read(path.clone(), e))?;
    let steps = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| ReportError::Parse {
                path: path.clone(),
                line: i + 1,
                detail: e.to_string(),
            })
        })
        .collect::<Result<Vec<Value>, _>>()?;
    if steps.is_empty() {
        return Err(ReportError::Empty(path));
    }
    Ok(steps)
}

/// Writes every chart that has data into `out`, each point pooling `window` steps (1: every
/// step); returns the files written.
pub fn write(run: &Path, out: &Path, window: usize) -> Result<Vec<PathBuf>, ReportError> {
    let steps = read_metrics(run)?;
    std::fs::create_dir_all(out).map_err(|e| ReportError::Read(out.to_owned(), e))?;
    // Rejection reasons are whatever the run met, so their chart is built from the data.
    let mut reasons: Vec<String> = steps
        .iter()
        .filter_map(|s| s["rejections"].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect();
    reasons.sort();
    reasons.dedup();
    let reason_paths: Vec<[&str; 2]> = reasons.iter().map(|r| ["@rejected", r.as_str()]).collect();
    let reason_series: Vec<(&str, &[&str])> = reasons
        .iter()
        .zip(&reason_paths)
        .map(|(r, p)| (r.as_str(), p.as_slice()))
        .collect();
    let rejections = (
        "rejections.png",
        "Rejected proposals by reason",
        "fraction of proposals",
        reason_series.as_slice(),
    );
    let mut written = Vec::new();
    for &(file, title, y_label, series) in CHARTS.iter().chain([&rejections]) {
        let lines: Vec<(&str, Vec<(f64, f64)>)> = series
            .iter()
            .map(|(label, path)| (*label, windowed(&steps, path, window)))
            .filter(|(_, points)| !points.is_empty())
            .collect();
        if lines.is_empty() {
            continue;
        }
        let path = out.join(file);
        let title = match window {
            0 | 1 => title.to_string(),
            n => format!("{title} (per {n} steps)"),
        };
        chart(&path, &title, y_label, &lines).map_err(|e| ReportError::Draw(path.clone(), e))?;
        written.push(path);
    }
    Ok(written)
}

/// One line chart over steps.
fn chart(
    path: &Path,
    title: &str,
    y_label: &str,
    lines: &[(&str, Vec<(f64, f64)>)],
) -> Result<(), String> {
    let points = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    // Plotters never finishes laying out ticks over a range whose span overflows to infinity,
    // so values near f64::MAX are drawn in units of 10^k, named on the axis.
    let top = y0.abs().max(y1.abs());
    let (unit, y_label) = match top > 1e300 {
        true => {
            let k = top.log10().floor();
            (10f64.powf(k), format!("{y_label} (x 1e{k})"))
        }
        false => (1.0, y_label.to_string()),
    };
    let (y0, y1) = (y0 / unit, y1 / unit);
    // Degenerate ranges (one step, constant values) still get a visible axis.
    let (x1, pad) = (x1.max(x0 + 1.0), ((y1 - y0) * 0.05).max(1e-3));
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut ctx = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(|e| e.to_string())?;
    ctx.configure_mesh()
        .x_desc("step")
        .y_desc(&y_label)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (label, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        ctx.draw_series(LineSeries::new(
            points.iter().map(|&(x, y)| (x, y / unit)),
            color.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label(*label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: u64, correct: u64) -> Value {
        serde_json::json!({
            "step": n, "buffer_size": 3 + n, "mean_proposal_tokens": 60.0, "mean_answer_tokens": 40.0,
            "generate_tokens_per_sec": 19.0,
            "deduction": {"proposals": 2, "valid_proposals": 1, "solver_answers": 4, "solver_correct": correct, "mean_learnability": 0.5},
            "abduction": {"proposals": 2, "valid_proposals": 0, "solver_answers": 4, "solver_correct": 0, "mean_learnability": 0.0},
            "induction": {"proposals": 0, "valid_proposals": 0, "solver_answers": 0, "solver_correct": 0, "mean_learnability": 0.0},
            "rejections": {"format": 3},
            "update": {"loss": 0.1, "grad_norm": 1.2, "entropy": 2.0, "approx_kl": 0.01, "tokens_per_sec": 14.0,
                       "groups": [{"group": 1, "reward_mean": 0.25}, {"group": 0, "reward_mean": -1.0}]}
        })
    }

    #[test]
    fn derived_series_are_computed() {
        let s = step(2, 3);
        assert_eq!(lookup(&s, &["deduction", "@accuracy"]), Some((3.0, 4.0)));
        assert_eq!(lookup(&s, &["induction", "@validity"]), None);
        assert_eq!(lookup(&s, &["update", "@group", "1"]), Some((0.25, 1.0)));
        assert_eq!(lookup(&s, &["update", "grad_norm"]), Some((1.2, 1.0)));
        assert_eq!(lookup(&s, &["validation", "cruxeval_o"]), None);
        assert_eq!(lookup(&s, &["@rejected", "format"]), Some((3.0, 4.0)));
    }

    #[test]
    fn windows_pool_counts_not_ratios() {
        // Accuracy 3/4 then 0/4: the pooled window is 3/8, the last step names the point.
        let steps = [step(1, 3), step(2, 0), step(3, 1)];
        let points = windowed(&steps, &["deduction", "@accuracy"], 2);
        assert_eq!(points, [(2.0, 3.0 / 8.0), (3.0, 0.25)]);
        let every = windowed(&steps, &["update", "grad_norm"], 1);
        assert_eq!(every.len(), 3);
    }

    #[test]
    fn writes_a_png_per_chart_with_data() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (1..=5).map(|n| format!("{}\n", step(n, n % 4))).collect();
        std::fs::write(dir.path().join("metrics.jsonl"), lines).unwrap();
        let out = dir.path().join("report");
        let files = write(dir.path(), &out, 2).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&"solver_accuracy.png".to_string()),
            "{names:?}"
        );
        assert!(
            !names.contains(&"validation.png".to_string()),
            "no validation data, no chart"
        );
        assert!(names.contains(&"rejections.png".to_string()), "{names:?}");
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{f:?} is not a PNG");
            assert!(bytes.len() > 5_000, "{f:?} is suspiciously small");
        }
    }

    /// Issue 19: a metric near f64::MAX hung the report.
    #[test]
    fn draws_values_near_the_largest_finite_number() {
        let steps: Vec<Value> = [1.7e308, 1.7e308, -1.7e308]
            .iter()
            .enumerate()
            .map(|(i, v)| serde_json::json!({"step": i + 1, "buffer_size": v}))
            .collect();
        let points = windowed(&steps, &["buffer_size"], 2);
        assert_eq!(points, [(2.0, 1.7e308), (3.0, -1.7e308)]);

        let dir = tempfile::tempdir().unwrap();
        let lines: String = steps.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(dir.path().join("metrics.jsonl"), lines).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        let run = dir.path().to_owned();
        std::thread::spawn(move || done.send(write(&run, &run.join("r"), 2)));
        let files = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the report did not finish in a minute")
            .unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
    }

    #[test]
    fn bad_metrics_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            format!("{}\nnot json\n", step(1, 0)),
        )
        .unwrap();
        let err = write(dir.path(), &dir.path().join("r"), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = write(Path::new("/nonexistent"), Path::new("/tmp/x"), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is this a run directory"), "{err}");
    }
}
