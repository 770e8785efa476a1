//! Parsing what the model wrote: the R1 frame (`<think>…</think><answer>…</answer>`), then the
//! fenced blocks inside the answer. Anything malformed is a typed [`ParseError`], never a panic;
//! a property test throws arbitrary strings at every entry point.

use serde::Serialize;

/// Why a completion is malformed. Each is a format failure and earns the format penalty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "error", content = "detail", rename_all = "snake_case")]
pub enum ParseError {
    #[error("no </think> closing the reasoning")]
    NoThinkEnd,
    #[error("text before <think>")]
    TextBeforeThink,
    #[error("no <answer> right after </think>")]
    NoAnswerStart,
    #[error("no </answer> closing the answer")]
    NoAnswerEnd,
    #[error("text after </answer>")]
    TrailingText,
    #[error("tag {0} appears more than once")]
    RepeatedTag(&'static str),
    #[error("the answer is empty")]
    EmptyAnswer,
    #[error("a ``` block is not closed")]
    UnclosedBlock,
    #[error("no ```{0} block in the answer")]
    MissingBlock(&'static str),
    #[error("{count} ```{kind} blocks where one is expected")]
    ExtraBlocks { kind: &'static str, count: usize },
}

/// The two parts of a well-formed completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed<'a> {
    pub think: &'a str,
    pub answer: &'a str,
}

const THINK: &str = "<think>";
const THINK_END: &str = "</think>";
const ANSWER: &str = "<answer>";
const ANSWER_END: &str = "</answer>";

/// Checks the R1 frame strictly: optional `<think>` at the start (the prompt may already end
/// with it), one `</think>`, then only whitespace before one `<answer>…</answer>`, and nothing
/// but whitespace after it.
pub fn frame(text: &str) -> Result<Framed<'_>, ParseError> {
    for tag in [THINK, THINK_END, ANSWER, ANSWER_END] {
        if text.matches(tag).count() > 1 {
            return Err(ParseError::RepeatedTag(tag));
        }
    }
    let think_end = text.find(THINK_END).ok_or(ParseError::NoThinkEnd)?;
    let mut think = &text[..think_end];
    if let Some(open) = think.find(THINK) {
        if !think[..open].trim().is_empty() {
            return Err(ParseError::TextBeforeThink);
        }
        think = &think[open + THINK.len()..];
    }
    let rest = text[think_end + THINK_END.len()..].trim_start();
    let rest = rest.strip_prefix(ANSWER).ok_or(ParseError::NoAnswerStart)?;
    let answer_end = rest.find(ANSWER_END).ok_or(ParseError::NoAnswerEnd)?;
    if !rest[answer_end + ANSWER_END.len()..].trim().is_empty() {
        return Err(ParseError::TrailingText);
    }
    let answer = rest[..answer_end].trim();
    if answer.is_empty() {
        return Err(ParseError::EmptyAnswer);
    }
    Ok(Framed {
        think: think.trim(),
        answer,
    })
}

/// A fenced block: ```lang\nbody```.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block<'a> {
    pub lang: &'a str,
    pub body: &'a str,
}

/// Every fenced block in `text`, in order.
pub fn blocks(text: &str) -> Result<Vec<Block<'_>>, ParseError> {
    let parts: Vec<&str> = text.split("```").collect();
    if parts.len().is_multiple_of(2) {
        return Err(ParseError::UnclosedBlock);
    }
    Ok(parts
        .iter()
        .skip(1)
        .step_by(2)
        .map(|inside| {
            let (lang, body) = inside.split_once('\n').unwrap_or(("", inside));
            Block {
                lang: lang.trim(),
                body: trim_blank_lines(body),
            }
        })
        .collect())
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

fn of_kind<'a>(blocks: &[Block<'a>], kind: &str) -> Vec<&'a str> {
    blocks
        .iter()
        .filter(|b| b.lang.eq_ignore_ascii_case(kind) || (kind == "python" && b.lang == "py"))
        .map(|b| b.body)
        .collect()
}

fn exactly_one<'a>(blocks: &[Block<'a>], kind: &'static str) -> Result<&'a str, ParseError> {
    match of_kind(blocks, kind).as_slice() {
        [] => Err(ParseError::MissingBlock(kind)),
        [one] if one.trim().is_empty() => Err(ParseError::MissingBlock(kind)),
        [one] => Ok(one),
        many => Err(ParseError::ExtraBlocks {
            kind,
            count: many.len(),
        }),
    }
}

/// A deduction or abduction proposal: a program and one input for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramProposal {
    pub program: String,
    pub input: String,
}

/// Parses a deduction/abduction proposal: one ```python block and one ```input block.
pub fn program_proposal(text: &str) -> Result<ProgramProposal, ParseError> {
    let framed = frame(text)?;
    let blocks = blocks(framed.answer)?;
    Ok(ProgramProposal {
        program: exactly_one(&blocks, "python")?.to_string(),
        input: exactly_one(&blocks, "input")?.trim().to_string(),
    })
}

/// An induction proposal: inputs for a given program and a message about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputsProposal {
    pub inputs: Vec<String>,
    pub message: String,
}

/// Parses an induction proposal: one or more ```input blocks and one ```message block.
pub fn inputs_proposal(text: &str) -> Result<InputsProposal, ParseError> {
    let framed = frame(text)?;
    let blocks = blocks(framed.answer)?;
    let inputs: Vec<String> = of_kind(&blocks, "input")
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if inputs.is_empty() {
        return Err(ParseError::MissingBlock("input"));
    }
    Ok(InputsProposal {
        inputs,
        message: exactly_one(&blocks, "message")?.trim().to_string(),
    })
}

/// A deduction (output) or abduction (input) answer: the answer text, or the body of the one
/// fenced block it consists of.
pub fn value_answer(text: &str) -> Result<String, ParseError> {
    let answer = frame(text)?.answer;
    let blocks = blocks(answer)?;
    let value = match blocks.as_slice() {
        [] => answer,
        [one] => one.body,
        many => {
            return Err(ParseError::ExtraBlocks {
                kind: "answer",
                count: many.len(),
            })
        }
    };
    match value.trim() {
        "" => Err(ParseError::EmptyAnswer),
        v => Ok(v.to_string()),
    }
}

/// An induction answer: the one ```python block, or the bare answer when it has no fences.
pub fn program_answer(text: &str) -> Result<String, ParseError> {
    let answer = frame(text)?.answer;
    let blocks = blocks(answer)?;
    if blocks.is_empty() {
        return Ok(answer.to_string());
    }
    exactly_one(&blocks, "python").map(str::to_string)
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
            (
                "hi <think>x</think><answer>1</answer>",
                ParseError::TextBeforeThink,
            ),
            (
                "<think>x</think> so <answer>1</answer>",
                ParseError::NoAnswerStart,
            ),
            ("<think>x</think><answer>1", ParseError::NoAnswerEnd),
            (
                "<think>x</think><answer>1</answer> more",
                ParseError::TrailingText,
            ),
            (
                "<think>x</think></think><answer>1</answer>",
                ParseError::RepeatedTag("</think>"),
            ),
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
    fn block_errors_are_typed() {
        let wrap = |a: &str| format!("<think>t</think><answer>{a}</answer>");
        assert_eq!(
            program_proposal(&wrap("```python\ndef f(x): return x\n```")).unwrap_err(),
            ParseError::MissingBlock("input")
        );
        assert_eq!(
            program_proposal(&wrap("```python\ndef f(x): return x\n")).unwrap_err(),
            ParseError::UnclosedBlock
        );
        assert_eq!(
            program_proposal(&wrap(
                "```python\na\n```\n```python\nb\n```\n```input\n1\n```"
            ))
            .unwrap_err(),
            ParseError::ExtraBlocks {
                kind: "python",
                count: 2
            }
        );
        assert_eq!(
            inputs_proposal(&wrap("```input\n1\n```")).unwrap_err(),
            ParseError::MissingBlock("message")
        );
    }

    #[test]
    fn induction_proposal_collects_inputs() {
        let text = "<think>t</think><answer>```input\n1\n```\n```input\n[2, 3]\n```\n```message\nDoubles it.\n```</answer>";
        let p = inputs_proposal(text).unwrap();
        assert_eq!(p.inputs, ["1", "[2, 3]"]);
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
    fn indentation_of_code_is_kept() {
        let b = blocks("```python\n\n    x = 1\n```").unwrap();
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
