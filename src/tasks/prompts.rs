//! Every prompt azr shows the model, in one place. A prompt is a system message (the R1 frame)
//! and a user message; the generation layer applies the model's chat template, or joins them as
//! plain text for a base model. `{name}` marks where values go.

use super::{Example, Task, TaskType};

/// A prompt as chat messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPrompt {
    pub system: String,
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
- It defines a function `f` that takes at least one argument and returns a value; helper \
functions may be nested inside `f` or defined before it.
- It is deterministic: the same input always gives the same output. No randomness, no time or \
date, no printing, no reading or writing files, no network.
- It does not import any of these modules: {banned}.
- Inputs and outputs are Python literals: numbers, strings, booleans, None, and lists, tuples, \
dicts and sets of them.
- An input is written as the arguments of the call: `'abc', [1, 2]` means f('abc', [1, 2]).";

const PROPOSE_PROGRAM: &str = "## Task: create a new {kind} exercise
Write a Python program and one input for it, such that {goal} is a challenging but solvable \
reasoning exercise. Prefer programs whose behaviour needs several steps of careful reasoning \
to trace, over long or obscure ones.

{rules}

{references}Answer with the program and the input, in this format:
<answer>
```python
def f(...):
    ...
```
```input
ARGUMENTS
```
</answer>";

const PROPOSE_INPUTS: &str = "## Task: propose inputs and a message for a program
Here is a program:
```python
{program}
```
Write {n} different inputs for `f` that together reveal what it does, and a short message \
that hints at what `f` computes without giving away its code. Someone will see some of the \
inputs with their outputs, plus your message, and must write `f`.

{rules}

Answer in this format, with {n} input blocks:
<answer>
```input
ARGUMENTS
```
...
```message
MESSAGE
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
Reason step by step, then give the arguments of the call as Python literals (`'abc', 3` means \
f('abc', 3)): <answer>ARGUMENTS</answer>";

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

/// Fills `{name}` placeholders.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_string(), |text, (name, value)| {
            text.replace(&format!("{{{name}}}"), value)
        })
}

fn rules(banned: &[String]) -> String {
    fill(CODE_RULES, &[("banned", &banned.join(", "))])
}

fn chat(user: String) -> ChatPrompt {
    ChatPrompt {
        system: SYSTEM.to_string(),
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

/// The reference tasks a proposer sees, as examples to differ from.
fn references_text(references: &[Task]) -> String {
    if references.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = references
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "### Existing task {}\n```python\n{}\n```\n{}",
                i + 1,
                t.program,
                examples_text(t.shown_examples())
            )
        })
        .collect();
    format!(
        "Existing tasks follow; make yours different from all of them:\n\n{}\n\n",
        shown.join("\n\n")
    )
}

/// Prompt for proposing a deduction or abduction task, with K reference tasks.
pub fn propose_program(task_type: TaskType, references: &[Task], banned: &[String]) -> ChatPrompt {
    let goal = match task_type {
        TaskType::Abduction => "finding an input that produces the program's output",
        _ => "predicting the program's output for the input",
    };
    chat(fill(
        PROPOSE_PROGRAM,
        &[
            ("kind", task_type.as_str()),
            ("goal", goal),
            ("rules", &rules(banned)),
            ("references", &references_text(references)),
        ],
    ))
}

/// Prompt for proposing `n` inputs and a message for a program from the buffer (induction).
pub fn propose_inputs(program: &str, n: usize, banned: &[String]) -> ChatPrompt {
    chat(fill(
        PROPOSE_INPUTS,
        &[
            ("program", program),
            ("n", &n.to_string()),
            ("rules", &rules(banned)),
        ],
    ))
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
            propose_inputs("def f(a):\n    return a", 10, &banned),
            solve(&task(TaskType::Deduction), &banned),
            solve(&task(TaskType::Abduction), &banned),
            solve(&task(TaskType::Induction), &banned),
        ];
        for p in &prompts {
            for name in [
                "{kind}",
                "{goal}",
                "{rules}",
                "{references}",
                "{banned}",
                "{program}",
                "{n}",
                "{input}",
                "{output}",
                "{message}",
                "{examples}",
            ] {
                assert!(!p.user.contains(name), "{name} left in:\n{}", p.user);
            }
            assert!(p.system.contains("<think>") && p.system.contains("<answer>"));
        }
        assert!(prompts[0].user.contains("Existing task 1"));
        assert!(prompts[0].user.contains("os, random"));
        assert!(prompts[2].user.contains("10 different inputs"));
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
