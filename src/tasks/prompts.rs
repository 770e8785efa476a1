//! Every prompt azr shows the model, in one place. A prompt is a system message (the R1 frame)
//! and a user message; the generation layer applies the model's chat template, or joins them as
//! plain text for a base model. `{name}` marks where values go.

use super::{Example, Task, TaskType};

/// A prompt as chat messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatPrompt {
    pub system: String,
    /// Earlier (user, assistant) exchanges, shown before `user`: worked examples of the
    /// answer's form, which a small chat model imitates far more reliably than a description.
    pub shots: Vec<(String, String)>,
    pub user: String,
}

/// The R1-style frame, as in AZR: reasoning in `<think>`, the final answer in `<answer>`.
pub const SYSTEM: &str =
    "A conversation between User and Assistant. The User asks a question, and the \
Assistant solves it. The Assistant first thinks about the reasoning process in the mind and then \
provides the User with the answer. The reasoning process is enclosed within <think> </think> and \
the answer is enclosed within <answer> </answer> tags, i.e., <think> reasoning process here \
</think> <answer> answer here </answer>.";

const CODE_RULES: &str = "Rules for the program:
- It defines a function `f` that takes at least one argument and returns a value. Helper \
functions and classes may be defined before `f` or nested inside it; standard-library imports \
go at the top.
- It is deterministic and pure: the same input always gives the same output, also when `f` is \
called twice. No randomness, no time or date, no printing, no files, no network, no state kept \
between calls.
- It does not import any of these modules: {banned}.
- Inputs and outputs are Python literals: numbers, strings, booleans, None, and lists, tuples, \
dicts and sets of them.
- An input is written as the arguments of one call, exactly as they go between the parentheses \
of `f(...)`: for `def f(a, b)`, an input `A, B` means the call f(A, B).";

/// The input block comes before the program in the answer: asked for the program first,
/// Qwen2.5-Coder-0.5B often stopped after it, with no input block (BENCHMARKS.md, cold start).
const PROPOSE_PROGRAM: &str = "## Task: invent a new {kind} exercise
Write a Python function `f` and one input for it. A solver will be given {solver_sees} and \
must {solver_task} without running the code. Make it take a few steps of careful reasoning \
(loops, changing state, several operations combined; helper functions or a class are fine), \
and make it different in idea from every earlier exercise.

Rules: `f` takes at least one argument and returns a value; the same input always gives the \
same output; no randomness, time, printing, files or network; no imports of {banned}. The \
input is the arguments of one call to `f`, written as Python literals.

Think briefly inside <think> </think>. Then write the input and the program inside <answer> \
</answer>, in exactly this form:
<answer>
```input
YOUR INPUT
```
```python
def f(...):
    YOUR CODE
```
</answer>";

/// The request after the first, when reference tasks are shown as earlier exchanges.
const PROPOSE_ANOTHER: &str = "Invent another {kind} exercise, different in idea from all the \
ones before. Same rules and same form: think briefly inside <think> </think>, then the input \
and the program inside <answer> </answer>.";

/// A reference task as the answer that wrote it: the plan checks the output.
const WORKED_PROPOSAL: &str = "<think>
An idea unlike the earlier exercises. Checked on the input: it returns {output}.
</think>
<answer>
```input
{input}
```
```python
{program}
```
</answer>";

const PROPOSE_INPUTS: &str = "## Task: choose the test inputs of a program-writing exercise
Here is a program:
```python
{program}
```
A solver will have to write this program without seeing it, from some of your inputs with \
the outputs `f` gives for them, and from your message. Write {n} inputs for `f` and a message.
- Each input is the arguments of one call `{call}`, written as Python literals (numbers, \
strings, booleans, None, and lists, tuples, dicts and sets of them).
- The inputs are all different and together cover what `f` does: typical cases, edge cases \
and each branch of its logic, so that the shown ones pin its behaviour down and the hidden ones \
test it.
- Every input is valid: `f` returns a value for it, without an error.
- The message helps without giving the code away: describe in words what `f` computes, or ask \
the question it answers.

Plan the inputs inside <think> </think> first. Then give them inside <answer> </answer>: \
{n} fenced input blocks, one input each, then the message in a fenced message block:
<think>
YOUR PLAN
</think>
<answer>
{input_blocks}
```message
YOUR MESSAGE
```
</answer>";

const SOLVE_DEDUCTION: &str = "## Task: predict the output
What does `f` return for this input?
```python
{program}
```
```input
{input}
```
Reason step by step, then give the returned value as a Python literal: <answer>VALUE</answer>";

const SOLVE_ABDUCTION: &str = "## Task: find an input
Find an input for which `f` returns this output.
```python
{program}
```
```output
{output}
```
Reason step by step, then give the arguments of the call as Python literals, exactly as they go \
between the parentheses of `f(...)`: <answer>ARGUMENTS</answer>";

const SOLVE_INDUCTION: &str = "## Task: write the program
Write a Python function `f` that produces these outputs from these inputs.
Message from the task's author: {message}

{examples}

{rules}

Reason step by step, then give the whole program:
<answer>
```python
def f(...):
    ...
```
</answer>";

/// Fills `{name}` placeholders in one pass over the template: values go in as they are and
/// are never scanned again, so a program that contains `{input}` reaches the solver unchanged.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (close, *v))
        });
        match value {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn rules(banned: &[String]) -> String {
    fill(CODE_RULES, &[("banned", &banned.join(", "))])
}

fn chat(user: String) -> ChatPrompt {
    ChatPrompt {
        system: SYSTEM.to_string(),
        shots: Vec::new(),
        user,
    }
}

fn examples_text(examples: &[Example]) -> String {
    examples
        .iter()
        .map(|e| format!("```input\n{}\n```\n```output\n{}\n```", e.input, e.output))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prompt for proposing a deduction or abduction task. The K reference tasks are shown as
/// earlier exchanges of the same conversation, each asked for and answered in the answer's
/// form, and the last turn asks for another one unlike them.
pub fn propose_program(task_type: TaskType, references: &[Task], banned: &[String]) -> ChatPrompt {
    let (solver_sees, solver_task) = match task_type {
        TaskType::Abduction => (
            "the program and the output it gives for your input",
            "find an input that produces that output",
        ),
        _ => ("the program and your input", "predict the output"),
    };
    let kind = [("kind", task_type.as_str())];
    let first = fill(
        PROPOSE_PROGRAM,
        &[
            kind[0],
            ("solver_sees", solver_sees),
            ("solver_task", solver_task),
            ("banned", &banned.join(", ")),
        ],
    );
    let mut asks = std::iter::once(first).chain(std::iter::repeat(fill(PROPOSE_ANOTHER, &kind)));
    let shots = references
        .iter()
        .filter_map(|t| Some((asks.next()?, worked_proposal(t))))
        .collect();
    ChatPrompt {
        system: SYSTEM.to_string(),
        shots,
        user: asks.next().expect("an endless iterator"),
    }
}

fn worked_proposal(task: &Task) -> String {
    let example = task.shown_examples().first();
    fill(
        WORKED_PROPOSAL,
        &[
            ("input", example.map_or("", |e| e.input.as_str())),
            ("output", example.map_or("", |e| e.output.as_str())),
            ("program", &task.program),
        ],
    )
}

/// Prompt for proposing `n` inputs and a message for a program from the buffer (induction).
/// The answer's shape is spelled out block by block (a 0.5B model asked for "n blocks" wrote
/// two, and copied any concrete example input it was shown), and the rules for writing a
/// program are left out (the program is given; shown them, the model wrote a program).
/// Unlike the program proposals it shows no earlier tasks as worked answers: shown the
/// buffer's induction tasks that way, Qwen2.5-Coder-0.5B copied their inputs whatever the
/// program's signature (BENCHMARKS.md, "Proposals as a conversation").
pub fn propose_inputs(program: &str, n: usize) -> ChatPrompt {
    let blocks: Vec<String> = (1..=n)
        .map(|i| format!("```input\nINPUT {i}\n```"))
        .collect();
    chat(fill(
        PROPOSE_INPUTS,
        &[
            ("program", program),
            ("n", &n.to_string()),
            ("call", &call_shape(program)),
            ("input_blocks", &blocks.join("\n")),
        ],
    ))
}

/// `f(a, b)` as the program defines it (its first `def f(` line), else `f(...)`.
fn call_shape(program: &str) -> String {
    program
        .lines()
        .find_map(|line| {
            let params = line.trim_start().strip_prefix("def f(")?;
            let end = params.rfind(')')?;
            Some(format!("f({})", &params[..end]))
        })
        .unwrap_or_else(|| "f(...)".into())
}

/// Prompt for solving a task of any type.
pub fn solve(task: &Task, banned: &[String]) -> ChatPrompt {
    let first = task.examples.first();
    let input = first.map_or("", |e| e.input.as_str());
    let output = first.map_or("", |e| e.output.as_str());
    let user = match task.task_type {
        TaskType::Deduction => fill(
            SOLVE_DEDUCTION,
            &[("program", &task.program), ("input", input)],
        ),
        TaskType::Abduction => fill(
            SOLVE_ABDUCTION,
            &[("program", &task.program), ("output", output)],
        ),
        TaskType::Induction => fill(
            SOLVE_INDUCTION,
            &[
                ("message", task.message.as_deref().unwrap_or("")),
                ("examples", &examples_text(task.shown_examples())),
                ("rules", &rules(banned)),
            ],
        ),
    };
    chat(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(task_type: TaskType) -> Task {
        Task {
            task_type,
            program: "def f(a):\n    return a".into(),
            normalized: "def f(a):\n    return a".into(),
            examples: vec![
                Example {
                    input: "'Hello world'".into(),
                    output: "'Hello world'".into(),
                },
                Example {
                    input: "7".into(),
                    output: "7".into(),
                },
            ],
            shown: 1,
            message: Some("Returns its argument.".into()),
        }
    }

    #[test]
    fn no_placeholder_is_left_unfilled() {
        let banned = vec!["os".to_string(), "random".to_string()];
        let prompts = [
            propose_program(TaskType::Deduction, &[task(TaskType::Deduction)], &banned),
            propose_program(TaskType::Abduction, &[], &banned),
            propose_inputs("def f(a):\n    return a", 10),
            solve(&task(TaskType::Deduction), &banned),
            solve(&task(TaskType::Abduction), &banned),
            solve(&task(TaskType::Induction), &banned),
        ];
        for p in &prompts {
            let texts = p.shots.iter().flat_map(|(u, a)| [u, a]).chain([&p.user]);
            for (text, name) in texts.flat_map(|t| {
                [
                    "{kind}",
                    "{solver_sees}",
                    "{solver_task}",
                    "{rules}",
                    "{references}",
                    "{banned}",
                    "{program}",
                    "{n}",
                    "{input}",
                    "{output}",
                    "{message}",
                    "{examples}",
                    "{call}",
                    "{input_blocks}",
                ]
                .map(|name| (t, name))
            }) {
                assert!(!text.contains(name), "{name} left in:\n{text}");
            }
            assert!(p.system.contains("<think>") && p.system.contains("<answer>"));
        }
        assert!(prompts[2].user.contains("Write 10 inputs"));
        // The induction proposer gets no program-writing rules.
        assert!(!prompts[2].user.contains("Rules for the program"));
        // A program proposer writes its input block before the program.
        assert!(input_first(&prompts[1].user) && prompts[1].user.contains("os, random"));
        assert!(prompts[1].shots.is_empty());
    }

    #[test]
    fn references_are_earlier_exchanges_answered_in_the_answer_form() {
        let mut reference = task(TaskType::Deduction);
        reference.program = "def f(a):\n    return a * 2".into();
        let p = propose_program(
            TaskType::Deduction,
            &[reference.clone(), task(TaskType::Deduction)],
            &[],
        );
        assert_eq!(p.shots.len(), 2);
        let (ask, answer) = &p.shots[0];
        // The first exchange carries the instructions; the later ones and the question only
        // ask for another.
        assert!(ask.contains("Rules:") && !p.user.contains("Rules:"));
        assert!(p.user.contains("another deduction exercise"), "{}", p.user);
        assert_eq!(p.shots[1].0, p.user);
        let frame = crate::tasks::parse::frame(answer).unwrap();
        let blocks = crate::tasks::parse::program_blocks(frame.answer).unwrap();
        assert_eq!(blocks.program, reference.program);
        assert_eq!(blocks.input, "'Hello world'");
        assert!(
            frame.think.contains("returns 'Hello world'"),
            "{}",
            frame.think
        );
        assert!(input_first(answer));
    }

    /// Whether the last answer of `text` puts its input block before its program.
    fn input_first(text: &str) -> bool {
        let answer = &text[text.rfind("<answer>").unwrap()..];
        answer.find("```input").unwrap() < answer.find("```python").unwrap()
    }

    #[test]
    fn values_are_inserted_as_written_never_substituted_again() {
        let mut t = task(TaskType::Deduction);
        t.program = "def f(a):\n    return '{input} {output} {n} {program}'.format(a)".into();
        t.examples.truncate(1);
        for task_type in [TaskType::Deduction, TaskType::Abduction] {
            t.task_type = task_type;
            let p = solve(&t, &[]);
            assert!(p.user.contains(&t.program), "{}", p.user);
        }
        let inputs = propose_inputs(&t.program, 3);
        assert!(inputs.user.contains(&t.program), "{}", inputs.user);
        assert!(inputs.user.contains("one call `f(a)`"), "{}", inputs.user);
        assert!(inputs.user.contains("INPUT 3") && !inputs.user.contains("INPUT 4"));
        assert_eq!(fill("{a}{b}", &[("a", "{b}"), ("b", "x")]), "{b}x");
        assert_eq!(fill("{ {a} }", &[("a", "1")]), "{ 1 }");
    }

    #[test]
    fn induction_solver_sees_only_shown_examples() {
        let p = solve(&task(TaskType::Induction), &[]);
        assert!(p.user.contains("'Hello world'"));
        assert!(
            !p.user.contains("```input\n7"),
            "hidden example leaked:\n{}",
            p.user
        );
        assert!(p.user.contains("Returns its argument."));
    }

    #[test]
    fn deduction_hides_the_output_and_abduction_the_input() {
        let mut t = task(TaskType::Deduction);
        t.examples.truncate(1);
        t.examples[0].output = "'SECRET'".into();
        assert!(!solve(&t, &[]).user.contains("SECRET"));
        t.task_type = TaskType::Abduction;
        t.examples[0].input = "'HIDDEN'".into();
        assert!(!solve(&t, &[]).user.contains("HIDDEN"));
    }
}
