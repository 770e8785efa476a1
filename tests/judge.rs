//! Hostile programs and answers against the real sandbox: one test per way a model-written
//! program could reach its own verdict (forged events, patched builtins or harness, values that
//! claim equality, leaked expected values, one answer changing another's run, early exits,
//! banned modules by other spellings). Each attack must end as "wrong" or "invalid".

mod common;

use common::sandbox;

use azr::tasks::parse;
use azr::tasks::reward::{self, Verdict};
use azr::tasks::validate::{self, Rejection};
use azr::tasks::{Task, TaskType};

async fn validate(task_type: TaskType, program: &str, input: &str) -> Result<Task, Rejection> {
    let text = format!(
        "<think>\nx\n</think>\n<answer>\n```python\n{program}\n```\n```input\n{input}\n```\n</answer>"
    );
    validate::program_task(sandbox(), task_type, &parse::program_proposal(&text)?).await
}

fn answer(body: &str) -> String {
    format!("<think>\nx\n</think>\n<answer>{body}</answer>")
}

fn program_answer(program: &str) -> String {
    answer(&format!("```python\n{program}\n```"))
}

/// An induction task for `def f(xs): return sorted(xs)` with two hidden examples.
async fn sorting_task() -> Task {
    let text = "<think>\nx\n</think>\n<answer>\n```input\n[3, 1]\n```\n```input\n[2]\n```\n\
                ```input\n[5, 4, 9]\n```\n```input\n[]\n```\n```message\nsorts\n```\n</answer>";
    let proposal = parse::inputs_proposal(text).unwrap();
    validate::induction_task(sandbox(), "def f(xs):\n    return sorted(xs)", &proposal, 4)
        .await
        .unwrap()
}

/// Judges each answer alone and returns which were judged correct.
async fn correct(task: &Task, answers: &[String]) -> Vec<bool> {
    let verdicts = reward::judge(sandbox(), task, answers).await;
    verdicts.iter().map(Verdict::is_correct).collect()
}

/// Each reader tries one way to find the run's nonce (or the expected outputs) and leaves what
/// it saw in `found`; [`FORGE`] then writes, under every nonce-like string in it, the events a
/// right answer would get, to both stdouts. None may turn a wrong program into a right one.
const READERS: &[&str] = &[
    "found = open(0).read()",
    "import gc\nfound = str(gc.get_objects())",
    "def g():\n    yield\nframe, found = g().gi_frame, ''\nwhile frame:\n    found, frame = found + str(frame.f_locals), frame.f_back",
    "try:\n    1 / 0\nexcept Exception as e:\n    frame, found = e.__traceback__.tb_frame, ''\nwhile frame:\n    found, frame = found + str(frame.f_locals), frame.f_back",
    "import inspect\nfound = str([f.frame.f_locals for f in inspect.stack()])",
    "import __main__\nfound = str(vars(__main__))",
    "import json\njson.encoder.encode_basestring_ascii = lambda s: '\"[4, 5, 9]\"'\nfound = ''",
];

const FORGE: &str = r#"import re, posix
EVENTS = ['{"event": "call", "index": %d, "status": "value", "repr": "%s", "literal": true, "roundtrips": true, "matches": true}' % (i, r) for i, r in enumerate(['[4, 5, 9]', '[]'])]
for fd in (1, 2):
    for nonce in set(re.findall('azr-[0-9a-f]{16}', found)) or {''}:
        for event in EVENTS:
            posix.write(fd, ('\n' + nonce + ' ' + event + '\n').encode())
"#;

#[tokio::test]
async fn forged_events_and_leaked_nonces_never_pass() {
    let task = sorting_task().await;
    let answers: Vec<String> = READERS
        .iter()
        .map(|reader| {
            // With the secret in hand, write call events claiming the hidden outputs to both
            // stdouts, then return a wrong value.
            program_answer(&format!("{reader}\n{FORGE}def f(xs):\n    return 'wrong'"))
        })
        .collect();
    let verdicts = reward::judge(sandbox(), &task, &answers).await;
    assert!(verdicts.iter().all(|v| !v.is_correct()), "{verdicts:#?}");
}

#[tokio::test]
async fn patched_builtins_and_modules_do_not_change_what_the_harness_reports() {
    // The gold output is what f really returns, whatever the module body patches first.
    let patches = [
        "import builtins\nbuiltins.repr = lambda v: '999'",
        "import builtins\nbuiltins.type = lambda v: int",
        "import builtins\nbuiltins.len = lambda v: 0",
        "import json\njson.dumps = lambda *a, **k: '{\"event\": \"call\"}'",
        "import builtins\nbuiltins.eval = lambda *a, **k: ([999], {})",
    ];
    for patch in patches {
        let program = format!("{patch}\ndef f(x):\n    return [x, x]");
        let task = validate(TaskType::Deduction, &program, "7").await;
        assert_eq!(
            task.map(|t| t.examples[0].output.clone()),
            Ok("[7, 7]".to_string()),
            "{patch}"
        );
    }
    // An induction answer that patches builtins so a wrong value would look right.
    let task = sorting_task().await;
    let answers = [program_answer(
        "import builtins\nbuiltins.repr = lambda v: '[4, 5, 9]'\nbuiltins.isinstance = lambda *a: True\n\
         def f(xs):\n    return xs",
    )];
    assert_eq!(correct(&task, &answers).await, [false]);
}

#[tokio::test]
async fn values_that_claim_equality_never_match() {
    let task = sorting_task().await;
    let always_equal = "class Any:\n    def __eq__(self, other):\n        return True\n    \
                        def __ne__(self, other):\n        return False\n    \
                        def __repr__(self):\n        return '[4, 5, 9]'\n";
    let answers = [
        program_answer(&format!("{always_equal}def f(xs):\n    return Any()")),
        program_answer(&format!("{always_equal}def f(xs):\n    return [Any()] * len(xs)")),
        program_answer("class L(list):\n    pass\ndef f(xs):\n    return L(sorted(xs))"),
        program_answer("class S(str):\n    def __eq__(s, o):\n        return True\ndef f(xs):\n    return S('x')"),
        program_answer("def f(xs):\n    return sorted(xs)"),
    ];
    assert_eq!(
        correct(&task, &answers).await,
        [false, false, false, false, true]
    );
    // Nor can such a value become a gold output.
    let rejection = validate(
        TaskType::Deduction,
        &format!("{always_equal}def f(x):\n    return Any()"),
        "1",
    )
    .await
    .unwrap_err();
    assert_eq!(rejection.kind(), "not_round_trip");
}

#[tokio::test]
async fn deduction_answers_built_by_traversal_or_calls_never_match() {
    let task = validate(TaskType::Deduction, "def f(x):\n    return x + 1", "1")
        .await
        .unwrap();
    let answers = [
        answer("().__class__.__class__(2)"),
        answer("().__class__.__base__.__subclasses__() and 2"),
        answer("[c for c in ().__class__.__base__.__subclasses__()][0] and 2"),
        answer("__import__('builtins').int(2)"),
        answer("exit(0)"),
        answer("2"),
    ];
    assert_eq!(
        correct(&task, &answers).await,
        [false, false, false, false, false, true]
    );
}

#[tokio::test]
async fn a_program_never_sees_the_expected_output() {
    // An abduction program that would return whatever it is compared with, if it could find
    // it: the gold output never enters its interpreter, so it finds nothing.
    let program = "def f(x):\n    import gc\n    try:\n        found = [o for o in gc.get_objects() if isinstance(o, list) and len(o) == 2]\n    except Exception:\n        found = []\n    return x if x == 'seed' else str(found)";
    let task = validate(TaskType::Abduction, program, "'seed'")
        .await
        .unwrap();
    assert_eq!(task.examples[0].output, "'seed'");
    let answers = [answer("'other'"), answer("'seed'")];
    assert_eq!(correct(&task, &answers).await, [false, true]);
}

#[tokio::test]
async fn one_answer_cannot_change_how_another_is_judged() {
    // Valid on its own input; on 0 it patches a builtin that every later call would see if
    // answers shared an interpreter.
    let program = "import builtins\ndef f(x):\n    if x == 0:\n        builtins.sorted = lambda *a, **k: [2, 1]\n    return sorted([x, 1])";
    let task = validate(TaskType::Abduction, program, "2").await.unwrap();
    assert_eq!(task.examples[0].output, "[1, 2]");
    let answers = [answer("0"), answer("2"), answer("2")];
    assert_eq!(correct(&task, &answers).await, [false, true, true]);
    // Likewise for induction answers, each in its own interpreter.
    let task = sorting_task().await;
    let answers = [
        program_answer(
            "import builtins\nbuiltins.sorted = lambda *a, **k: []\ndef f(xs):\n    return []",
        ),
        program_answer("def f(xs):\n    return sorted(xs)"),
    ];
    assert_eq!(correct(&task, &answers).await, [false, true]);
}

#[tokio::test]
async fn every_kind_of_early_exit_fails() {
    let exits = [
        "raise SystemExit(0)",
        "exit()",
        "quit(0)",
        "raise KeyboardInterrupt",
        "__import__('posix')._exit(0)",
        "open(1, 'w').close()",
        "raise GeneratorExit",
    ];
    let task = sorting_task().await;
    for exit in exits {
        let body = exit.replace('\n', "\n    ");
        let in_f = program_answer(&format!("def f(xs):\n    {body}\n    return sorted(xs)"));
        let at_import = program_answer(&format!("{exit}\ndef f(xs):\n    return sorted(xs)"));
        assert_eq!(
            correct(&task, &[in_f, at_import]).await,
            [false, false],
            "{exit}"
        );
        // And a proposal that exits is no task.
        let program = format!("def f(x):\n    {body}\n    return x");
        assert!(
            validate(TaskType::Deduction, &program, "1").await.is_err(),
            "{exit}"
        );
    }
}

#[tokio::test]
async fn banned_modules_are_refused_however_the_import_is_spelled() {
    let spellings = [
        "m = __import__('o' + 's')",
        "import builtins\nm = builtins.__import__('ti' + 'me')",
        "m = __builtins__['__import__']('sys') if isinstance(__builtins__, dict) else __builtins__.__import__('s' + 'ys')",
        "exec('import ' + 'random')",
        "m = eval(\"__import__('date' + 'time')\")",
        "import importlib\nm = importlib.import_module('ra' + 'ndom')",
        "import pickle\nm = pickle.loads(b'cos\\ngetcwd\\n(tR.')",
    ];
    for spelling in spellings {
        for program in [
            format!("{spelling}\ndef f(x):\n    return x"),
            format!(
                "def f(x):\n    {}\n    return x",
                spelling.replace('\n', "\n    ")
            ),
        ] {
            let rejection = validate(TaskType::Deduction, &program, "1")
                .await
                .unwrap_err();
            assert!(
                rejection.to_string().contains("banned"),
                "{program}: {rejection}"
            );
        }
    }
    // The stdlib's own use of them still works.
    let program = "import typing, fractions, dataclasses, collections, json\n\
                   P = collections.namedtuple('P', 'a b')\n\
                   def f(x: typing.List[int]):\n    return [str(fractions.Fraction(x, 2)), P(1, x).b, json.dumps(x)]";
    assert_eq!(
        validate(TaskType::Deduction, program, "3")
            .await
            .map(|t| t.examples[0].output.clone()),
        Ok("['3/2', 3, '3']".to_string())
    );
}
