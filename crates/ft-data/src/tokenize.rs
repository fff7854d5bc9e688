//! Examples → token ids plus a label mask, with the loss only where it belongs.
//!
//! Chat masks are template-agnostic: the span of assistant turn `i` is the text between the
//! rendering of `messages[..i]` with a generation prompt and the rendering of `messages[..=i]`,
//! both prefixes of the full rendering, with surrounding whitespace trimmed (computed in linear
//! time by [`crate::mask`]). So the labels are the turn's content and its end-of-turn marker,
//! for any template, without `{% generation %}` tags. Character spans become token labels
//! through the tokenizer's offsets: a token is a label when it overlaps a span.

use std::ops::Range;

use crate::chat::{ChatTemplate, Message};
use crate::format::Example;
pub use crate::mask::assistant_spans;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Token ids and, per token, whether it is a training target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenizedExample {
    /// The token ids.
    pub input_ids: Vec<u32>,
    /// `labels[i]`: the loss includes predicting `input_ids[i]` from the tokens before it.
    pub labels: Vec<bool>,
}

impl TokenizedExample {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Number of label tokens that can be predicted (the first token never is).
    pub fn num_labels(&self) -> usize {
        self.labels.iter().skip(1).filter(|l| **l).count()
    }
}

/// Turns [`Example`]s into [`TokenizedExample`]s for one tokenizer and template.
#[derive(Debug)]
pub struct ExampleTokenizer<'a> {
    tokenizer: &'a Tokenizer,
    template: Option<ChatTemplate>,
    train_on_prompt: bool,
}

impl<'a> ExampleTokenizer<'a> {
    /// Uses `tokenizer` and its chat template (needed only for chat examples).
    /// `train_on_prompt` puts prompt tokens of prompt/completion examples in the loss too.
    pub fn new(tokenizer: &'a Tokenizer, train_on_prompt: bool) -> Self {
        Self {
            tokenizer,
            template: tokenizer.chat_template().ok(),
            train_on_prompt,
        }
    }

    /// Uses `template` instead of the tokenizer's own.
    pub fn with_template(mut self, template: ChatTemplate) -> Self {
        self.template = Some(template);
        self
    }

    /// Tokenizes one example.
    pub fn tokenize(&self, example: &Example) -> Result<TokenizedExample> {
        match example {
            Example::Chat(messages) => {
                let template = self.template.as_ref().ok_or_else(|| {
                    Error::Template("the model has no chat template; chat data needs one".into())
                })?;
                let all: Vec<Message> = messages.iter().map(|m| m.message.clone()).collect();
                let trained: Vec<usize> = messages
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.train)
                    .map(|(i, _)| i)
                    .collect();
                let (text, spans) = assistant_spans(template, &all, &trained)?;
                self.label_spans(&text, false, &spans, false)
            }
            Example::Completion { prompt, completion } => {
                let text = format!("{prompt}{completion}");
                let start = if self.train_on_prompt {
                    0
                } else {
                    prompt.len()
                };
                self.label_spans(
                    &text,
                    true,
                    std::slice::from_ref(&(start..text.len())),
                    true,
                )
            }
            Example::Text(text) => {
                self.label_spans(text, true, std::slice::from_ref(&(0..text.len())), true)
            }
        }
    }

    fn label_spans(
        &self,
        text: &str,
        add_special_tokens: bool,
        spans: &[Range<usize>],
        append_eos: bool,
    ) -> Result<TokenizedExample> {
        let (mut input_ids, offsets) = self
            .tokenizer
            .encode_with_offsets(text, add_special_tokens)?;
        // Spans are sorted and disjoint: a binary search per token keeps this O(n log spans)
        // (checking every span for every token was quadratic on long conversations).
        let mut labels: Vec<bool> = offsets
            .iter()
            .map(|&(start, end)| {
                let next = spans.partition_point(|s| s.end <= start);
                end > start && spans.get(next).is_some_and(|s| s.start < end)
            })
            .collect();
        if append_eos {
            if let Some(eos) = self.tokenizer.eos_id() {
                input_ids.push(eos);
                labels.push(true);
            }
        }
        Ok(TokenizedExample { input_ids, labels })
    }
}
