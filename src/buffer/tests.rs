use rand::{rngs::StdRng, SeedableRng};

use super::*;

fn task(task_type: TaskType, program: &str, input: &str) -> Task {
    Task {
        task_type,
        program: program.into(),
        normalized: program.into(),
        examples: vec![Example {
            input: input.into(),
            output: input.into(),
        }],
        shown: 1,
        message: None,
    }
}

fn program(i: usize) -> String {
    format!("def f(a):\n    return a + {i}")
}

fn filled(dir: &Path, n: usize) -> Buffer {
    let buffer = Buffer::open(&dir.join("buffer.sqlite")).unwrap();
    for i in 0..n {
        buffer
            .insert(
                &task(TaskType::Deduction, &program(i), "1"),
                i as i64,
                Origin::Proposer,
                &[],
            )
            .unwrap();
    }
    buffer
}

#[test]
fn tasks_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/buffer.sqlite");
    let t = task(TaskType::Abduction, "def f(a):\n    return a", "'x'");
    let id = {
        let buffer = Buffer::open(&path).unwrap();
        let Inserted::New(id) = buffer.insert(&t, 3, Origin::Proposer, &[]).unwrap() else {
            panic!("not new")
        };
        buffer
            .record_attempt(
                id,
                Attempt {
                    step: 4,
                    samples: 8,
                    successes: 2,
                },
            )
            .unwrap();
        id
    };
    let buffer = Buffer::open_existing(&path).unwrap();
    let stored = buffer.get(id).unwrap().unwrap();
    assert_eq!(stored.task, t);
    assert_eq!(stored.step, 3);
    assert_eq!(stored.solve_rate(), Some(0.25));
    assert_eq!(
        buffer.attempts(id).unwrap(),
        [Attempt {
            step: 4,
            samples: 8,
            successes: 2
        }]
    );
}

#[test]
fn missing_buffer_is_a_clear_error() {
    let err = Buffer::open_existing(Path::new("/nonexistent/run/buffer.sqlite"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("is this a run directory"), "{err}");
}

#[test]
fn duplicates_are_found_by_type_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Buffer::open(&dir.path().join("b.sqlite")).unwrap();
    let t = task(TaskType::Deduction, "def f(a):\n    return a", "1");
    let Inserted::New(id) = buffer.insert(&t, 1, Origin::Proposer, &[]).unwrap() else {
        panic!()
    };
    // Same normalised program and input: a duplicate.
    let again = task(TaskType::Deduction, "def f(a):\n    return a", " 1");
    assert_eq!(
        buffer.insert(&again, 2, Origin::Proposer, &[]).unwrap(),
        Inserted::Duplicate(id)
    );
    // Same program, other input: another task (AZR keys by program and input).
    let other_input = task(TaskType::Deduction, "def f(a):\n    return a", "2");
    assert!(matches!(
        buffer
            .insert(&other_input, 2, Origin::Proposer, &[])
            .unwrap(),
        Inserted::New(_)
    ));
    // The same program is a different task for another type.
    let abduction = task(TaskType::Abduction, "def f(a):\n    return a", "1");
    assert!(matches!(
        buffer.insert(&abduction, 2, Origin::Proposer, &[]).unwrap(),
        Inserted::New(_)
    ));
}

#[test]
fn truncate_drops_rows_of_unfinished_steps() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = filled(dir.path(), 6);
    buffer
        .record_attempt(
            1,
            Attempt {
                step: 2,
                samples: 4,
                successes: 1,
            },
        )
        .unwrap();
    buffer
        .record_attempt(
            1,
            Attempt {
                step: 5,
                samples: 4,
                successes: 4,
            },
        )
        .unwrap();
    let rejection = crate::tasks::validate::Rejection::Prints;
    buffer
        .record_rejection(5, TaskType::Deduction, &rejection, "text")
        .unwrap();
    for step in [2, 5] {
        buffer
            .record_metrics(step, &serde_json::json!({"step": step}))
            .unwrap();
    }
    buffer.truncate_after(3).unwrap();
    let left: Vec<i64> = buffer.tasks(None).unwrap().iter().map(|t| t.step).collect();
    assert_eq!(left, [0, 1, 2, 3]);
    let metrics: Vec<i64> = buffer.metrics().unwrap().iter().map(|(s, _)| *s).collect();
    assert_eq!(metrics, [2]);
    assert_eq!(buffer.get(1).unwrap().unwrap().samples, 4);
    assert!(buffer.stats().unwrap().rejections.is_empty());
}

#[test]
fn reference_sampling_is_deterministic_under_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = filled(dir.path(), 30);
    for weighting in [Weighting::Uniform, Weighting::Recent, Weighting::Learnable] {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            buffer
                .references(TaskType::Deduction)
                .unwrap()
                .draw(5, weighting, &mut rng)
                .iter()
                .map(|t| t.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7), "{weighting:?}");
        assert_ne!(draw(7), draw(8), "{weighting:?}");
        let ids = draw(7);
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 5, "{weighting:?}: repeats in {ids:?}");
    }
    let mut rng = StdRng::seed_from_u64(1);
    assert!(buffer
        .references(TaskType::Induction)
        .unwrap()
        .draw(5, Weighting::Uniform, &mut rng)
        .is_empty());
}

#[test]
fn recent_weighting_prefers_later_steps() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = filled(dir.path(), 40);
    let mut rng = StdRng::seed_from_u64(3);
    let mut mean_step = |w| {
        let mut total = 0;
        for _ in 0..200 {
            total += buffer
                .references(TaskType::Deduction)
                .unwrap()
                .draw(1, w, &mut rng)[0]
                .step;
        }
        total as f64 / 200.0
    };
    assert!(mean_step(Weighting::Recent) > mean_step(Weighting::Uniform) + 3.0);
}

#[test]
fn solver_batches_take_unseen_tasks_first() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = filled(dir.path(), 10);
    for id in 1..=7 {
        buffer
            .record_attempt(
                id,
                Attempt {
                    step: 9,
                    samples: 2,
                    successes: 1,
                },
            )
            .unwrap();
    }
    let mut rng = StdRng::seed_from_u64(0);
    let batch = buffer
        .sample_for_solving(TaskType::Deduction, 5, &mut rng)
        .unwrap();
    let ids: Vec<i64> = batch.iter().map(|t| t.id).collect();
    assert_eq!(&ids[..3], [10, 9, 8], "unseen first, newest first: {ids:?}");
    assert!(ids[3..].iter().all(|id| *id <= 7));
    assert_eq!(
        buffer
            .sample_for_solving(TaskType::Deduction, 50, &mut rng)
            .unwrap()
            .len(),
        10
    );
}

#[test]
fn schema_version_is_recorded_and_newer_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sqlite");
    drop(Buffer::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    // (Every migration ran: the latest one's table exists.)
    drop(conn);
    assert!(matches!(
        Buffer::open(&path),
        Err(BufferError::TooNew { found: 99, .. })
    ));
}

#[test]
fn lineage_follows_parents_once() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = filled(dir.path(), 2);
    let child = task(TaskType::Deduction, &program(100), "1");
    let Inserted::New(id) = buffer
        .insert(&child, 5, Origin::Proposer, &[1, 2, 1])
        .unwrap()
    else {
        panic!()
    };
    let ids: Vec<i64> = buffer.lineage(id).unwrap().iter().map(|t| t.id).collect();
    assert_eq!(ids, [id, 1, 2]);
}

#[test]
fn a_reader_sees_consistent_data_while_a_writer_inserts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sqlite");
    drop(Buffer::open(&path).unwrap());
    let writer_path = path.clone();
    let writer = std::thread::spawn(move || {
        let buffer = Buffer::open(&writer_path).unwrap();
        for i in 0..300 {
            let Inserted::New(id) = buffer
                .insert(
                    &task(TaskType::Deduction, &program(i), "1"),
                    i as i64,
                    Origin::Proposer,
                    &[],
                )
                .unwrap()
            else {
                panic!()
            };
            buffer
                .record_attempt(
                    id,
                    Attempt {
                        step: i as i64,
                        samples: 2,
                        successes: 1,
                    },
                )
                .unwrap();
        }
    });
    let reader = Buffer::open(&path).unwrap();
    let mut last = 0;
    while !writer.is_finished() {
        let tasks = reader.tasks(None).unwrap();
        assert!(tasks.len() >= last, "count went backwards");
        last = tasks.len();
        let stats = reader.stats().unwrap();
        assert!(stats.types[0].tasks >= last);
    }
    writer.join().unwrap();
    assert_eq!(reader.count(TaskType::Deduction).unwrap(), 300);
}

#[test]
fn stats_count_types_rates_and_growth() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = filled(dir.path(), 4);
    buffer
        .record_attempt(
            1,
            Attempt {
                step: 4,
                samples: 4,
                successes: 0,
            },
        )
        .unwrap();
    buffer
        .record_attempt(
            2,
            Attempt {
                step: 4,
                samples: 4,
                successes: 4,
            },
        )
        .unwrap();
    buffer
        .record_attempt(
            3,
            Attempt {
                step: 4,
                samples: 4,
                successes: 1,
            },
        )
        .unwrap();
    let stats = buffer.stats().unwrap();
    let deduction = &stats.types[0];
    assert_eq!(
        (
            deduction.tasks,
            deduction.attempted,
            deduction.distinct_programs
        ),
        (4, 3, 4)
    );
    assert!((deduction.mean_solve_rate.unwrap() - 1.25 / 3.0).abs() < 1e-9);
    let counts: Vec<usize> = stats.solve_rate_histogram.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [1, 1, 0, 0, 0, 1]);
    assert_eq!(stats.growth.last(), Some(&(3, 1, 4)));
    let text = stats.to_string();
    assert!(
        text.contains("deduction") && text.contains("growth"),
        "{text}"
    );
}
