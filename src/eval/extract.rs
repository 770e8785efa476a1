//! Getting the answer out of what a model wrote: code from a fenced block or raw text, and the
//! one-line Python expression CRUXEval asks for.

/// The first fenced block's body (its language tag dropped; a block never closed runs to the
/// end), or the whole text when it has no fence. Fences count only at the start of a line, as
/// in Markdown: "```" may sit inside a string.
pub fn code(text: &str) -> &str {
    let open = match text.starts_with("```") {
        true => Some(0),
        false => text.find("\n```").map(|i| i + 1),
    };
    let Some(open) = open else {
        return text;
    };
    let after = &text[open + 3..];
    let body = after.find('\n').map_or("", |nl| &after[nl + 1..]);
    if body.starts_with("```") {
        return "";
    }
    body.find("\n```").map_or(body, |close| &body[..close + 1])
}

/// The expression on the answer line: its first line, without a closing fence.
pub fn expression(text: &str) -> &str {
    let line = text.lines().next().unwrap_or("");
    line.split("```").next().unwrap_or("").trim()
}

/// CRUXEval-I: the model continues `assert f(` and may well finish the line with
/// `) == <output>`; the arguments are what comes before that.
pub fn arguments<'a>(text: &'a str, output: &str) -> &'a str {
    let line = expression(text);
    if let Some(args) = line.strip_suffix(&format!(") == {output}")) {
        return args.trim();
    }
    match line.rfind(") ==") {
        Some(cut) => line[..cut].trim(),
        None => line.strip_suffix(')').unwrap_or(line).trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_comes_from_the_first_fenced_block() {
        let text = "Here you go:\n```python\ndef f(x):\n    return x\n```\nAnd a test:\n```python\nf(1)\n```";
        assert_eq!(code(text), "def f(x):\n    return x\n");
        assert_eq!(code("```\nx = 1\n```"), "x = 1\n");
        assert_eq!(code("```python\n```"), "");
    }

    #[test]
    fn an_unclosed_block_runs_to_the_end_and_raw_text_is_kept() {
        assert_eq!(code("```python\nx = 1\ny = 2"), "x = 1\ny = 2");
        assert_eq!(code("def f():\n    return 1\n"), "def f():\n    return 1\n");
        assert_eq!(code("s = '```'\n"), "s = '```'\n");
        assert_eq!(code("```python\ns = '```'\n```"), "s = '```'\n");
    }

    #[test]
    fn expressions_are_one_line() {
        assert_eq!(expression(" [1, 2]  \nprint('x')"), "[1, 2]");
        assert_eq!(expression("'ab'```"), "'ab'");
        assert_eq!(expression(""), "");
    }

    #[test]
    fn arguments_drop_the_rest_of_the_assertion() {
        assert_eq!(arguments("'ab', 3) == 'abab'", "'abab'"), "'ab', 3");
        assert_eq!(arguments("[1]) == [2, 3]\n", "[4]"), "[1]");
        assert_eq!(arguments("'x')", "'y'"), "'x'");
        assert_eq!(arguments("5", "6"), "5");
    }
}
