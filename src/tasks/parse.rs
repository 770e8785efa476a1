//! Parsing what the model wrote: the R1 frame (`<think>…</think><answer>…</answer>`), as
//! leniently as AZR reads it, then the fenced blocks inside the answer. Anything malformed is a typed [`ParseError`], never a panic;
//! a property test throws arbitrary strings at every entry point.

use serde::Serialize;

/// Why a completion is malformed. Each is a format failure and earns the format penalty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "error", content = "detail", rename_all = "snake_case")]
pub enum ParseError {
    #[error("no </think> closing the reasoning")]
    NoThinkEnd,
    #[error("no <answer> after </think>")]
    NoAnswerStart,
    #[error("no <answer> in the completion")]
    NoAnswer,
    #[error("no </answer> closing the answer")]
    NoAnswerEnd,
    #[error("the answer is empty")]
    EmptyAnswer,
    #[error("no ```{0} block in the answer")]
    MissingBlock(&'static str),
}

/// The two parts of a well-formed completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed<'a> {
    pub think: &'a str,
    pub answer: &'a str,
}

const THINK: &str = "<think>";
/// Ends the reasoning; self-play generation stops at the first [`ANSWER_END`] after it.
pub const THINK_END: &str = "</think>";
const ANSWER: &str = "<answer>";
/// Ends the answer.
pub const ANSWER_END: &str = "</answer>";

/// Checks the R1 frame: the reasoning (opened by the prompt, or by the completion) ends at the
/// first `</think>`, and the last `<answer>…</answer>` block after it is the answer. AZR reads
/// `<think>.*?</think>\s*<answer>.*?</answer>` and so also wants nothing between the two
/// tags; azr lets text stand there, because Qwen2.5-Coder-0.5B closes its reasoning early and
/// goes on reasoning before the answer (its first self-play steps lost most well-answered
/// completions to that rule alone). The reasoning may mention the tags.
pub fn frame(text: &str) -> Result<Framed<'_>, ParseError> {
    let think_end = text.find(THINK_END).ok_or(ParseError::NoThinkEnd)?;
    let think = text[..think_end].trim();
    let think = think.strip_prefix(THINK).unwrap_or(think);
    let rest = &text[think_end + THINK_END.len()..];
    if !rest.contains(ANSWER) {
        return Err(ParseError::NoAnswerStart);
    }
    let close = rest.rfind(ANSWER_END).ok_or(ParseError::NoAnswerEnd)?;
    let open = rest[..close].rfind(ANSWER).ok_or(ParseError::NoAnswerEnd)?;
    let answer = rest[open + ANSWER.len()..close].trim();
    if answer.is_empty() {
        return Err(ParseError::EmptyAnswer);
    }
    Ok(Framed {
        think: think.trim(),
        answer,
    })
}

/// A proposal's answer as AZR reads it: what follows the last `<answer>`, up to the next
/// `</answer>` or the end of the text. A proposal's task is read from here whether or not the
/// completion keeps the frame; the frame decides only its reward (AZR stores any valid
/// program and pays a broken frame the format penalty).
pub fn proposal_answer(text: &str) -> Result<&str, ParseError> {
    let open = text.rfind(ANSWER).ok_or(ParseError::NoAnswer)?;
    let rest = &text[open + ANSWER.len()..];
    let answer = rest.split(ANSWER_END).next().unwrap_or(rest).trim();
    if answer.is_empty() {
        return Err(ParseError::EmptyAnswer);
    }
    Ok(answer)
}

/// A fenced block: ```lang\nbody```.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block<'a> {
    pub lang: &'a str,
    pub body: &'a str,
}

/// Every fenced block in `text`, in order. A last block left open ends with the text: the
/// answer's end closes it, as `</answer>` closes an open answer at the end of the turn.
pub fn blocks(text: &str) -> Vec<Block<'_>> {
    text.split("```")
        .skip(1)
        .step_by(2)
        .map(|inside| {
            let (lang, body) = inside.split_once('\n').unwrap_or(("", inside));
            Block {
                lang: lang.trim(),
                body: trim_blank_lines(body),
            }
        })
        .collect()
}

/// Drops blank lines at both ends but keeps the indentation of the first real line.
fn trim_blank_lines(body: &str) -> &str {
    let start = body
        .char_indices()
        .take_while(|(_, c)| c.is_whitespace())
        .filter(|(_, c)| *c == '\n')
        .last()
        .map_or(0, |(i, _)| i + 1);
    body[start..].trim_end()
}

/// Blocks of a kind; code blocks may be tagged `py` or not at all, as AZR reads them.
fn of_kind<'a>(blocks: &[Block<'a>], kind: &str) -> Vec<&'a str> {
    let python = kind == "python";
    blocks
        .iter()
        .filter(|b| b.lang.eq_ignore_ascii_case(kind) || (python && matches!(b.lang, "py" | "")))
        .map(|b| b.body)
        .collect()
}

/// The first non-empty block of a kind (AZR reads the first code and input blocks).
fn first<'a>(blocks: &[Block<'a>], kind: &'static str) -> Result<&'a str, ParseError> {
    of_kind(blocks, kind)
        .into_iter()
        .find(|b| !b.trim().is_empty())
        .ok_or(ParseError::MissingBlock(kind))
}

/// The last non-empty block of a kind (a solver's final version of its program).
fn last<'a>(blocks: &[Block<'a>], kind: &'static str) -> Result<&'a str, ParseError> {
    of_kind(blocks, kind)
        .into_iter()
        .rfind(|b| !b.trim().is_empty())
        .ok_or(ParseError::MissingBlock(kind))
}

/// A deduction or abduction proposal: a program and one input for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramProposal {
    pub program: String,
    pub input: String,
}

/// Parses a deduction/abduction proposal: the first ```python block and the first ```input
/// block of its answer ([`proposal_answer`]).
pub fn program_proposal(text: &str) -> Result<ProgramProposal, ParseError> {
    program_blocks(proposal_answer(text)?)
}

/// The first ```python and ```input blocks of `text`, framed or not.
pub fn program_blocks(text: &str) -> Result<ProgramProposal, ParseError> {
    let blocks = blocks(text);
    Ok(ProgramProposal {
        program: first(&blocks, "python")?.to_string(),
        input: call_arguments(first(&blocks, "input")?.trim()).to_string(),
    })
}

/// An induction proposal: inputs for a given program and a message about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputsProposal {
    pub inputs: Vec<String>,
    pub message: String,
}

/// Parses an induction proposal: the ```input blocks and the first ```message block of its
/// answer ([`proposal_answer`]).
pub fn inputs_proposal(text: &str) -> Result<InputsProposal, ParseError> {
    inputs_blocks(proposal_answer(text)?)
}

/// The ```input blocks and the first ```message block of `text`, framed or not.
pub fn inputs_blocks(text: &str) -> Result<InputsProposal, ParseError> {
    let blocks = blocks(text);
    let inputs: Vec<String> = of_kind(&blocks, "input")
        .into_iter()
        .map(|s| call_arguments(s.trim()).to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if inputs.is_empty() {
        return Err(ParseError::MissingBlock("input"));
    }
    Ok(InputsProposal {
        inputs,
        message: first(&blocks, "message")?.trim().to_string(),
    })
}

/// A deduction (output) or abduction (input) answer: the answer text, or the body of its last
/// fenced block when it has any.
pub fn value_answer(text: &str) -> Result<String, ParseError> {
    let answer = frame(text)?.answer;
    let blocks = blocks(answer);
    let value = blocks.last().map_or(answer, |b| b.body);
    match value.trim() {
        "" => Err(ParseError::EmptyAnswer),
        v => Ok(v.to_string()),
    }
}

/// An abduction answer: the call's arguments, also when the answer writes the whole call
/// `f(ARGS)` (the call judged is the same either way).
pub fn input_answer(text: &str) -> Result<String, ParseError> {
    Ok(call_arguments(&value_answer(text)?).to_string())
}

/// An input as the call's arguments: `ARGS` of a whole call `f(ARGS)`, else `value` as it is.
fn call_arguments(value: &str) -> &str {
    whole_call(value).unwrap_or(value)
}

/// `ARGS` of `f(ARGS)` when the parenthesis opened after `f` is the one that closes at the
/// end: `f(1) + f(2)` is not one call. Brackets inside string literals do not count.
fn whole_call(value: &str) -> Option<&str> {
    let inner = value.strip_prefix("f(")?.strip_suffix(')')?;
    let mut depth = 0usize;
    let mut quote = None;
    let mut escaped = false;
    for c in inner.chars() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    (depth == 0 && quote.is_none()).then_some(inner)
}

/// An induction answer: the last ```python block, or the bare answer when it has no fences.
pub fn program_answer(text: &str) -> Result<String, ParseError> {
    let answer = frame(text)?.answer;
    let blocks = blocks(answer);
    if blocks.is_empty() {
        return Ok(answer.to_string());
    }
    last(&blocks, "python").map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "<think>\nf reverses.\n</think>\n<answer>\n```python\ndef f(s):\n    return s[::-1]\n```\n```input\n'abc'\n```\n</answer>";

    #[test]
    fn well_formed_proposal_parses() {
        let p = program_proposal(GOOD).unwrap();
        assert_eq!(p.program, "def f(s):\n    return s[::-1]");
        assert_eq!(p.input, "'abc'");
    }

    #[test]
    fn think_may_be_prefilled_by_the_prompt() {
        let text = "reasoning</think><answer>42</answer>";
        assert_eq!(value_answer(text).unwrap(), "42");
        assert_eq!(frame(text).unwrap().think, "reasoning");
    }

    #[test]
    fn every_format_error_is_typed() {
        let cases: &[(&str, ParseError)] = &[
            ("<answer>1</answer>", ParseError::NoThinkEnd),
            ("<think>x</think> so 1", ParseError::NoAnswerStart),
            ("<think>x</think><answer>1", ParseError::NoAnswerEnd),
            (
                "<think>x</think><answer> \n </answer>",
                ParseError::EmptyAnswer,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(value_answer(text).unwrap_err(), *expected, "{text}");
        }
    }

    #[test]
    fn reasoning_may_mention_the_tags_and_the_last_answer_counts() {
        // What AZR's `<think>.*?</think>\s*<answer>.*?</answer>` accepts, and words between
        // the reasoning and the answer.
        let cases = [
            ("t</think>\nSo f returns 5: <answer>5</answer>", "5"),
            (
                "I will end with </think> and <answer>x</answer>.</think>\n<answer>1</answer>",
                "1",
            ),
            (
                "a <think> b</think><answer>1</answer><answer>2</answer>",
                "2",
            ),
            ("t</think> <answer>3</answer>\ntrailing words", "3"),
            ("t</think></think><answer>4</answer>", "4"),
        ];
        for (text, answer) in cases {
            assert_eq!(value_answer(text).unwrap(), answer, "{text}");
        }
    }

    #[test]
    fn a_proposal_is_read_after_the_last_answer_tag_with_or_without_the_frame() {
        let task = "```python\ndef f(x): return x\n```\n```input\n3\n```";
        for text in [
            format!("<think>t</think><answer>{task}</answer>"),
            // No reasoning closed, the answer left open, a draft answer before: AZR's reading.
            format!("t <answer>{task}"),
            format!("t <answer>draft</answer> more </think><answer>{task}</answer> words"),
        ] {
            assert_eq!(program_proposal(&text).unwrap().input, "3", "{text}");
        }
        assert_eq!(
            program_proposal(&format!("t</think>{task}")).unwrap_err(),
            ParseError::NoAnswer
        );
        assert_eq!(
            proposal_answer("t</think><answer> </answer>").unwrap_err(),
            ParseError::EmptyAnswer
        );
    }

    #[test]
    fn block_errors_are_typed() {
        let wrap = |a: &str| format!("<think>t</think><answer>{a}</answer>");
        assert_eq!(
            program_proposal(&wrap("```python\ndef f(x): return x\n```")).unwrap_err(),
            ParseError::MissingBlock("input")
        );
        let open = program_proposal(&wrap("```python\ndef f(x): return x\n```\n```input\n3\n"));
        assert_eq!(open.unwrap().input, "3");
        // The first code and input blocks count, as in AZR.
        let p = program_proposal(&wrap(
            "```python\na\n```\n```python\nb\n```\n```input\n1\n```",
        ))
        .unwrap();
        assert_eq!((p.program.as_str(), p.input.as_str()), ("a", "1"));
        assert_eq!(
            inputs_proposal(&wrap("```input\n1\n```")).unwrap_err(),
            ParseError::MissingBlock("message")
        );
        let two = wrap("```python\ndef f(x): return 1\n```\n```python\ndef f(x): return 2\n```");
        assert_eq!(program_answer(&two).unwrap(), "def f(x): return 2");
    }

    #[test]
    fn induction_proposal_collects_inputs() {
        let text = "<think>t</think><answer>```input\n1\n```\n```input\n[2, 3]\n```\n```message\nDoubles it.\n```</answer>";
        let p = inputs_proposal(text).unwrap();
        assert_eq!(p.inputs, ["1", "[2, 3]"]);
        assert_eq!(p.message, "Doubles it.");
        // Inputs written as whole calls, and a message block the answer's end closes.
        let text = "<think>t</think><answer>```input\nf(1)\n```\n```input\nf([2], 'x')\n```\n```message\nDoubles it.</answer>";
        let p = inputs_proposal(text).unwrap();
        assert_eq!(p.inputs, ["1", "[2], 'x'"]);
        assert_eq!(p.message, "Doubles it.");
    }

    #[test]
    fn answers_may_be_fenced_or_bare() {
        let bare = "<think>t</think><answer>[1, 2]</answer>";
        let fenced = "<think>t</think><answer>```output\n[1, 2]\n```</answer>";
        assert_eq!(value_answer(bare).unwrap(), "[1, 2]");
        assert_eq!(value_answer(fenced).unwrap(), "[1, 2]");
        let code = "<think>t</think><answer>def f(x):\n    return x</answer>";
        assert_eq!(program_answer(code).unwrap(), "def f(x):\n    return x");
    }

    #[test]
    fn an_input_answer_may_write_the_whole_call() {
        let answer = |a: &str| input_answer(&format!("t</think><answer>{a}</answer>"));
        assert_eq!(answer("'ab', [1, 2]").unwrap(), "'ab', [1, 2]");
        assert_eq!(answer("f('ab', [1, 2])").unwrap(), "'ab', [1, 2]");
        assert_eq!(answer("f(')(', g(1))").unwrap(), "')(', g(1)");
        // Not one call: left as written (and judged as such).
        assert_eq!(answer("f(1) + f(2)").unwrap(), "f(1) + f(2)");
        assert_eq!(answer("f(')')").unwrap(), "')'");
        assert_eq!(answer("f('a\\')')").unwrap(), "'a\\')'");
        assert_eq!(answer("f('a'), (1)").unwrap(), "f('a'), (1)");
    }

    #[test]
    fn indentation_of_code_is_kept() {
        let b = blocks("```python\n\n    x = 1\n```");
        assert_eq!(b[0].body, "    x = 1");
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(text in "\\PC*") {
            let _ = program_proposal(&text);
            let _ = inputs_proposal(&text);
            let _ = value_answer(&text);
            let _ = program_answer(&text);
        }

        #[test]
        fn never_panics_on_tag_soup(parts in proptest::collection::vec(
            prop_oneof![
                Just("<think>".to_string()), Just("</think>".to_string()),
                Just("<answer>".to_string()), Just("</answer>".to_string()),
                Just("```".to_string()), Just("```python\n".to_string()),
                Just("```input\n".to_string()), Just("\n".to_string()), "\\PC{0,8}",
            ], 0..16)) {
            let text = parts.concat();
            let _ = program_proposal(&text);
            let _ = inputs_proposal(&text);
            let _ = value_answer(&text);
            let _ = program_answer(&text);
        }

        #[test]
        fn framed_text_round_trips(think in "[^<>]{0,40}", answer in "[^<>`\\s][^<>`]{0,40}") {
            let text = format!("<think>{think}</think>\n<answer>{answer}</answer>\n");
            let framed = frame(&text).unwrap();
            prop_assert_eq!(framed.think, think.trim());
            prop_assert_eq!(framed.answer, answer.trim());
        }
    }
}
