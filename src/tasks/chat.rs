//! Turning a [`ChatPrompt`] into the text a model continues: the model's own chat template
//! (the Jinja template in its `tokenizer_config.json`) when it has one, else a plain R1-style
//! transcript for base models. Rendering lives here, apart from the model, so the prompts can be
//! tested without weights; the model layer only hands over the template string.

use minijinja::{context, Environment, Error, ErrorKind};

use super::prompts::ChatPrompt;

/// Renders `prompt` with a Hugging Face chat template, ending with the assistant's turn open.
pub fn apply_template(template: &str, prompt: &ChatPrompt) -> Result<String, Error> {
    let mut env = Environment::new();
    // HF templates call Python string methods (`.strip()`, `.startswith()`) and raise_exception.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_template("chat", template)?;
    // An empty system message is left out, so the template can add its default one.
    let mut messages = Vec::new();
    if !prompt.system.is_empty() {
        messages.push(context! { role => "system", content => &prompt.system });
    }
    for (user, assistant) in &prompt.shots {
        messages.push(context! { role => "user", content => user });
        messages.push(context! { role => "assistant", content => assistant });
    }
    messages.push(context! { role => "user", content => &prompt.user });
    env.get_template("chat")?.render(context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => "",
        eos_token => "",
    })
}

/// Where a self-play answer starts: the reasoning, as the frame asks.
const OPEN: &str = "<think>";

/// The transcript a base model (no chat template) continues, as in AZR: the frame, the
/// question, and the assistant's turn opened at `<think>`.
pub fn plain(prompt: &ChatPrompt) -> String {
    let shots: String = prompt
        .shots
        .iter()
        .map(|(user, assistant)| format!("\nUser: {user}\nAssistant: {assistant}"))
        .collect();
    format!(
        "{}{shots}\nUser: {}\nAssistant: {OPEN}",
        prompt.system, prompt.user
    )
}

/// The text a model continues in self-play: its chat template when it has one (else the plain
/// transcript), with the assistant's turn opened at `<think>` either way. Left to open its own
/// turn, Qwen2.5-Coder-0.5B-Instruct answers straight away and every completion of its first
/// self-play steps failed the frame, so no reward had any variance to learn from.
pub fn selfplay(template: Option<&str>, prompt: &ChatPrompt) -> Result<String, Error> {
    match template {
        Some(template) => Ok(apply_template(template, prompt)? + OPEN),
        None => Ok(plain(prompt)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ChatML template of Qwen2.5 / SmolLM2-Instruct, in the form their configs carry.
    const CHATML: &str = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'].strip() + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

    fn prompt() -> ChatPrompt {
        ChatPrompt {
            system: "Think first.".into(),
            shots: Vec::new(),
            user: "  What is f(1)?  ".into(),
        }
    }

    #[test]
    fn chatml_template_renders_both_turns_and_opens_the_assistant() {
        let text = apply_template(CHATML, &prompt()).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nThink first.<|im_end|>\n<|im_start|>user\nWhat is f(1)?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn template_errors_are_reported_not_panics() {
        let raising = "{{ raise_exception('System role not supported') }}";
        let err = apply_template(raising, &prompt()).unwrap_err();
        assert!(
            err.to_string().contains("System role not supported"),
            "{err}"
        );
        assert!(apply_template("{% for %}", &prompt()).is_err());
    }

    #[test]
    fn selfplay_opens_the_assistants_turn_at_think_with_or_without_a_template() {
        let chat = selfplay(Some(CHATML), &prompt()).unwrap();
        assert!(chat.ends_with("<|im_start|>assistant\n<think>"), "{chat}");
        assert_eq!(selfplay(None, &prompt()).unwrap(), plain(&prompt()));
    }

    #[test]
    fn shots_come_as_earlier_turns_before_the_question() {
        let mut p = prompt();
        p.shots = vec![("Q1".into(), "A1".into()), ("Q2".into(), "A2".into())];
        let text = apply_template(CHATML, &p).unwrap();
        assert!(text.contains("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n<|im_start|>user\nWhat is f(1)?"), "{text}");
        let plain = plain(&p);
        assert!(
            plain.contains("\nUser: Q1\nAssistant: A1\nUser: Q2\nAssistant: A2\nUser:"),
            "{plain}"
        );
    }

    #[test]
    fn base_models_get_the_plain_r1_transcript() {
        let text = plain(&prompt());
        assert!(text.starts_with("Think first.\nUser:"));
        assert!(text.ends_with("Assistant: <think>"));
    }
}
