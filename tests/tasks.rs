//! Tasks end to end with hand-written model outputs, through the real sandbox: proposals of each
//! type (valid and invalid), format errors, solver answers (right and wrong), rewards, seeding.

mod common;

use common::sandbox;

use azr::buffer::{seed, Buffer, Inserted, Origin};
use azr::sandbox::Outcome;
use azr::tasks::parse::{self, ParseError};
use azr::tasks::reward::{self, learnability, RewardConfig, SolveRate, Verdict};
use azr::tasks::validate::{self, Rejection};
use azr::tasks::{Task, TaskType};

/// A model completion proposing `program` with `input`.
fn proposal(program: &str, input: &str) -> String {
    format!("<think>\nSomething that needs tracing.\n</think>\n<answer>\n```python\n{program}\n```\n```input\n{input}\n```\n</answer>")
}

async fn propose(task_type: TaskType, text: &str) -> Result<Task, Rejection> {
    let parsed = parse::program_proposal(text)?;
    validate::program_task(sandbox(), task_type, &parsed).await
}

const SORT_WORDS: &str =
    "def f(text, n):\n    words = sorted(text.split(), key=len)\n    return [w[:n] for w in words]";

#[tokio::test]
async fn a_valid_proposal_becomes_a_task_with_a_computed_output() {
    let task = propose(
        TaskType::Deduction,
        &proposal(SORT_WORDS, "'the quick brown fox', 2"),
    )
    .await
    .unwrap();
    assert_eq!(task.examples[0].output, "['th', 'fo', 'qu', 'br']");
    assert_eq!(task.normalized, SORT_WORDS);
    let abduction = propose(TaskType::Abduction, &proposal(SORT_WORDS, "'a bb', 1"))
        .await
        .unwrap();
    assert_eq!(abduction.task_type, TaskType::Abduction);
    assert_eq!(abduction.examples[0].output, "['a', 'b']");
}

#[tokio::test]
async fn invalid_proposals_are_rejected_with_the_reason() {
    let cases: Vec<(String, &str)> = vec![
        ("<answer>no think</answer>".into(), "format"),
        (proposal("def f(x):\n    return x +", "1"), "syntax"),
        (
            proposal(
                "import random\ndef f(x):\n    return random.random() + x",
                "1",
            ),
            "banned_import",
        ),
        (proposal("def g(x):\n    return x", "1"), "missing_function"),
        (proposal("def f():\n    return 1", "1"), "no_arguments"),
        (proposal("def f(x):\n    return 1 / x", "0"), "raised"),
        (
            proposal("def f(x):\n    return x", "open('/etc/passwd')"),
            "bad_input",
        ),
        (
            proposal("def f(x):\n    while True:\n        x += 1", "1"),
            "stopped",
        ),
        (
            proposal("def f(x):\n    return id(object()) + x", "1"),
            "nondeterministic",
        ),
        (
            proposal("def f(x):\n    return float('nan')", "1"),
            "not_round_trip",
        ),
        (
            proposal("def f(x):\n    print(x)\n    return x", "1"),
            "prints",
        ),
        (
            proposal("def f(x):\n    return 'y' * x", "10**6"),
            "bad_input",
        ),
        (
            proposal("def f(x):\n    return 'y' * x", "1000000"),
            "output_too_long",
        ),
        (
            proposal("def f(words, k):\n    ...", "['a'], 2"),
            "returns_none",
        ),
        (
            proposal("def f(xs):\n    xs.sort()", "[2, 1]"),
            "returns_none",
        ),
    ];
    for (text, kind) in cases {
        let rejection = propose(TaskType::Deduction, &text).await.unwrap_err();
        assert_eq!(rejection.kind(), kind, "{text}\n-> {rejection}");
    }
    let stopped = propose(
        TaskType::Deduction,
        &proposal("def f(x):\n    while True:\n        pass", "1"),
    )
    .await;
    assert_eq!(stopped.unwrap_err(), Rejection::Stopped(Outcome::Timeout));
}

fn inputs_text(inputs: &[&str]) -> String {
    let blocks: String = inputs
        .iter()
        .map(|i| format!("```input\n{i}\n```\n"))
        .collect();
    format!("<think>t</think><answer>{blocks}```message\nSorts the numbers and doubles each.\n```</answer>")
}

#[tokio::test]
async fn induction_needs_every_input_valid_and_distinct_and_hides_the_larger_half() {
    let program = "def f(xs):\n    return [2 * x for x in sorted(xs)]";
    let induction = |inputs: &[&str], min: usize| {
        let parsed = parse::inputs_proposal(&inputs_text(inputs)).unwrap();
        async move { validate::induction_task(sandbox(), program, &parsed, min).await }
    };
    let task = induction(&["[3, 1, 2]", "[]", "[5, 4]", "[9]", "[0, 0]"], 5)
        .await
        .unwrap();
    let inputs: Vec<&str> = task.examples.iter().map(|e| e.input.as_str()).collect();
    assert_eq!(inputs, ["[3, 1, 2]", "[]", "[5, 4]", "[9]", "[0, 0]"]);
    assert_eq!(task.examples[0].output, "[2, 4, 6]");
    // floor(n/2) shown, the rest hidden, as in AZR.
    assert_eq!(task.shown, 2);
    assert_eq!(task.hidden_examples().len(), 3);
    assert_eq!(
        task.message.as_deref(),
        Some("Sorts the numbers and doubles each.")
    );
    // One input given twice, or one that fails, makes the whole proposal invalid.
    let repeated = induction(&["[3, 1, 2]", "[]", " [3, 1, 2]", "[9]"], 4).await;
    assert_eq!(
        repeated.unwrap_err(),
        Rejection::RepeatedInput("[3, 1, 2]".into())
    );
    let failing = induction(&["[3, 1, 2]", "[None, 1]", "[9]", "[]"], 4).await;
    assert_eq!(failing.unwrap_err().kind(), "raised");
    // Some None outputs are fine; all None leaves nothing to infer.
    let get = "def f(d, k):\n    return d.get(k)";
    let some_none = parse::inputs_proposal(&inputs_text(&["{1: 2}, 1", "{}, 1"])).unwrap();
    assert!(validate::induction_task(sandbox(), get, &some_none, 2)
        .await
        .is_ok());
    let all_none = parse::inputs_proposal(&inputs_text(&["{1: 2}, 3", "{}, 1"])).unwrap();
    assert_eq!(
        validate::induction_task(sandbox(), get, &all_none, 2)
            .await
            .unwrap_err(),
        Rejection::ReturnsNone
    );
    let few = induction(&["[1]", "[2]", "[3]"], 4).await;
    assert_eq!(
        few.unwrap_err(),
        Rejection::TooFewExamples {
            given: 3,
            needed: 4
        }
    );
}

#[tokio::test]
async fn programs_that_keep_state_between_calls_are_invalid() {
    let counter = "def f(x, c=[0]):\n    c[0] += 1\n    return x + c[0]";
    let global = "seen = []\ndef f(x):\n    seen.append(x)\n    return len(seen)";
    for program in [counter, global] {
        let rejection = propose(TaskType::Abduction, &proposal(program, "1"))
            .await
            .unwrap_err();
        assert_eq!(rejection.kind(), "stateful", "{program}: {rejection}");
    }
    // Mutating the argument is not state: each call gets its input parsed anew.
    let mutating = "def f(xs):\n    xs.append(1)\n    return xs";
    assert!(propose(TaskType::Deduction, &proposal(mutating, "[2]"))
        .await
        .is_ok());
}

#[tokio::test]
async fn every_judged_call_starts_from_a_fresh_program_state() {
    // Valid in each run, but calling it again would count on: judged with one f kept across
    // answers, only the first of several right answers would pass.
    let task = task_of(TaskType::Abduction, "def f(x):\n    return x * 2", "3").await;
    let mut stateful = task.clone();
    stateful.program = "def f(x, c=[0]):\n    c[0] += 1\n    return x * 2 * c[0]".into();
    let answers = vec![answer("3"); 4];
    for t in [&task, &stateful] {
        let verdicts = reward::judge(sandbox(), t, &answers).await;
        assert!(verdicts.iter().all(Verdict::is_correct), "{verdicts:?}");
    }
}

#[tokio::test]
async fn only_plain_literals_can_match() {
    let deduction = task_of(TaskType::Deduction, "def f(x):\n    return x + 1", "1").await;
    let answers = [
        answer("2"),
        answer("().__class__.__base__.__subclasses__() and 2"),
        answer("int('2')"),
        answer("x"),
    ];
    let correct: Vec<bool> = reward::judge(sandbox(), &deduction, &answers)
        .await
        .iter()
        .map(Verdict::is_correct)
        .collect();
    assert_eq!(correct, [true, false, true, false]);

    let parsed = parse::inputs_proposal(&inputs_text(&["[1]", "[2]", "[3]", "[4]"])).unwrap();
    let induction = validate::induction_task(
        sandbox(),
        "def f(xs):\n    return [2 * x for x in sorted(xs)]",
        &parsed,
        4,
    )
    .await
    .unwrap();
    let always_equal = "class Any:\n    def __eq__(self, other):\n        return True\n    def __repr__(self):\n        return '[2]'\ndef f(xs):\n    return Any()";
    let subclass = "class L(list):\n    def __eq__(self, other):\n        return True\ndef f(xs):\n    return L()";
    let answers = [
        answer(&format!("```python\n{always_equal}\n```")),
        answer(&format!("```python\n{subclass}\n```")),
    ];
    let verdicts = reward::judge(sandbox(), &induction, &answers).await;
    assert!(verdicts.iter().all(|v| !v.is_correct()), "{verdicts:?}");
    // Nor can such a value become a gold output.
    let rejection = propose(TaskType::Deduction, &proposal(always_equal, "[1]"))
        .await
        .unwrap_err();
    assert_eq!(rejection.kind(), "not_round_trip");
}

fn answer(body: &str) -> String {
    format!("<think>\nLet me trace it.\n</think>\n<answer>{body}</answer>")
}

async fn task_of(task_type: TaskType, program: &str, input: &str) -> Task {
    propose(task_type, &proposal(program, input)).await.unwrap()
}

#[tokio::test]
async fn deduction_answers_are_judged_as_python_values() {
    let task = task_of(TaskType::Deduction, SORT_WORDS, "'the quick brown fox', 2").await;
    let answers = [
        answer("['th', 'fo', 'qu', 'br']"),
        answer("[\"th\",\"fo\",\"qu\",\"br\"]"),
        answer("```output\n['th', 'fo', 'qu', 'br']\n```"),
        answer("['th', 'qu', 'fo', 'br']"),
        "['th', 'fo', 'qu', 'br']".to_string(),
    ];
    let verdicts = reward::judge(sandbox(), &task, &answers).await;
    let correct: Vec<bool> = verdicts.iter().map(Verdict::is_correct).collect();
    assert_eq!(correct, [true, true, true, false, false]);
    assert_eq!(verdicts[4], Verdict::Malformed(ParseError::NoThinkEnd));
    let config = RewardConfig::default();
    let rewards: Vec<f32> = verdicts.iter().map(|v| v.reward(&config, false)).collect();
    assert_eq!(rewards, [1.0, 1.0, 1.0, -0.5, -1.0]);
}

#[tokio::test]
async fn abduction_accepts_any_input_that_works() {
    let task = task_of(
        TaskType::Abduction,
        "def f(a, b):\n    return a % b",
        "7, 3",
    )
    .await;
    assert_eq!(task.examples[0].output, "1");
    let answers = [
        answer("7, 3"),
        answer("10, 9"),
        answer("1, 5"),
        answer("4, 2"),
        answer("1, 0"),
        answer("os.system('x'), 1"),
    ];
    let verdicts = reward::judge(sandbox(), &task, &answers).await;
    let correct: Vec<bool> = verdicts.iter().map(Verdict::is_correct).collect();
    assert_eq!(correct, [true, true, true, false, false, false]);
}

#[tokio::test]
async fn induction_answers_must_reproduce_the_hidden_outputs() {
    let parsed = parse::inputs_proposal(
        "<think>t</think><answer>```input\n[3, 1]\n```\n```input\n[2]\n```\n```input\n[5, 0, 1]\n```\n```input\n[]\n```\n```message\nsorted, doubled\n```</answer>",
    )
    .unwrap();
    let task = validate::induction_task(
        sandbox(),
        "def f(xs):\n    return [2 * x for x in sorted(xs)]",
        &parsed,
        4,
    )
    .await
    .unwrap();
    let answers = [
        answer("```python\ndef f(xs):\n    return sorted(x * 2 for x in xs)\n```"),
        answer("def f(xs):\n    return [x + x for x in sorted(xs)]"),
        // Right on the shown pairs ([3, 1], [2]) only: hard-coding fails the hidden ones.
        answer(
            "```python\ndef f(xs):\n    return {(3, 1): [2, 6], (2,): [4]}.get(tuple(xs), [])\n```",
        ),
        answer("```python\nimport os\ndef f(xs):\n    return xs\n```"),
        answer("```python\ndef f(xs) return xs\n```"),
    ];
    let verdicts = reward::judge(sandbox(), &task, &answers).await;
    let correct: Vec<bool> = verdicts.iter().map(Verdict::is_correct).collect();
    assert_eq!(correct, [true, true, false, false, false]);
}

#[test]
fn learnability_rewards_the_proposer_for_tasks_in_between() {
    let config = RewardConfig::default();
    let rate = |s| SolveRate {
        successes: s,
        samples: 4,
        temperature: 1.0,
    };
    assert_eq!(learnability(&rate(0), &config).unwrap(), 0.0);
    assert_eq!(learnability(&rate(1), &config).unwrap(), 0.75);
    assert_eq!(learnability(&rate(3), &config).unwrap(), 0.25);
    assert_eq!(learnability(&rate(4), &config).unwrap(), 0.0);
}

#[tokio::test]
async fn seeding_adds_the_identity_tasks_once() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Buffer::open(&dir.path().join("buffer.sqlite")).unwrap();
    assert_eq!(seed::seed(&buffer, sandbox()).await.unwrap(), 3);
    assert_eq!(seed::seed(&buffer, sandbox()).await.unwrap(), 0);
    let tasks = buffer.tasks(None).unwrap();
    assert_eq!(tasks.len(), 3);
    assert!(tasks
        .iter()
        .all(|t| t.origin == Origin::Seed && t.step == 0));
    assert_eq!(tasks[0].task.examples[0].output, "'Hello world'");
}

#[tokio::test]
async fn duplicates_are_caught_on_normalised_programs() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Buffer::open(&dir.path().join("buffer.sqlite")).unwrap();
    let a = task_of(
        TaskType::Deduction,
        "def f(x):\n    # add one\n    return x+1",
        "1",
    )
    .await;
    let b = task_of(
        TaskType::Deduction,
        "def f(x):\n    return (x + 1)  # same",
        "1",
    )
    .await;
    assert_eq!(a.normalized, b.normalized);
    let Inserted::New(id) = buffer.insert(&a, 1, Origin::Proposer, &[]).unwrap() else {
        panic!()
    };
    assert_eq!(
        buffer.insert(&b, 1, Origin::Proposer, &[]).unwrap(),
        Inserted::Duplicate(id)
    );
    // The same program with another input is a new task.
    let c = task_of(TaskType::Deduction, "def f(x):\n    return x + 1", "5").await;
    assert!(matches!(
        buffer.insert(&c, 1, Origin::Proposer, &[]).unwrap(),
        Inserted::New(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cruxeval_gold_answers_score_one_and_wrong_ones_zero() {
    use azr::eval::cruxeval::{self, Mode};
    let problems: Vec<_> = cruxeval::problems().into_iter().take(40).collect();
    let gold_o: Vec<String> = problems.iter().map(|p| answer(&p.output)).collect();
    let gold_i: Vec<String> = problems.iter().map(|p| answer(&p.input)).collect();
    assert_eq!(
        cruxeval::score(sandbox(), &problems, Mode::Output, &gold_o).await,
        1.0
    );
    assert_eq!(
        cruxeval::score(sandbox(), &problems, Mode::Input, &gold_i).await,
        1.0
    );
    let wrong: Vec<String> = problems
        .iter()
        .map(|_| answer("'azr: not the answer'"))
        .collect();
    assert_eq!(
        cruxeval::score(sandbox(), &problems, Mode::Output, &wrong).await,
        0.0
    );
}
