//! Chat templates: the model's own Jinja template rendered with minijinja, configured like
//! transformers' jinja2 environment (`trim_blocks`, `lstrip_blocks`, Python string methods,
//! `raise_exception`).

use std::sync::atomic::{AtomicUsize, Ordering};

use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template plus the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Renders so far: tests check that mask computation stays linear without timing it.
    renders: AtomicUsize,
}

impl ChatTemplate {
    /// Compiles `source` (Jinja). `bos_token`/`eos_token` are exposed to the template.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template(format!("does not compile: {e}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            renders: AtomicUsize::new(0),
        })
    }

    /// Renders `messages`; with `add_generation_prompt`, ends with the header of an assistant
    /// turn so the model continues as the assistant.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.renders.fetch_add(1, Ordering::Relaxed);
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| Error::Template(format!("failed to render: {e}")))
    }
}

impl ChatTemplate {
    /// How many times [`ChatTemplate::render`] has run on this template (a cost measure that
    /// does not depend on the machine).
    pub fn render_count(&self) -> usize {
        self.renders.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_python_methods() -> Result<()> {
        let template = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>")?;
        let text = template.render(&[Message::new("user", " Hi ")], true)?;
        assert_eq!(
            text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        Ok(())
    }

    #[test]
    fn raise_exception_becomes_an_error() -> Result<()> {
        let template = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "")?;
        let err = template
            .render(&[], false)
            .expect_err("the template raises");
        assert!(err.to_string().contains("no system role"), "{err}");
        Ok(())
    }
}
