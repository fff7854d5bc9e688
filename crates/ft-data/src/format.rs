//! Dataset formats, detected per line (or forced): chat `messages`, prompt/completion (text or
//! conversational), and plain `text`. Parsing reports every problem with the field it is in.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::chat::Message;

/// The dataset format of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"messages": [{"role", "content", "weight"?}, ...]}` (OpenAI fine-tuning format).
    Chat,
    /// `{"prompt": .., "completion": ..}`, both strings or both message lists.
    PromptCompletion,
    /// `{"text": ".."}`: loss on every token.
    Text,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Chat => "chat",
            Self::PromptCompletion => "prompt-completion",
            Self::Text => "text",
        })
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chat" | "messages" => Ok(Self::Chat),
            "prompt-completion" | "completion" => Ok(Self::PromptCompletion),
            "text" => Ok(Self::Text),
            other => Err(format!(
                "unknown format `{other}`; use chat, prompt-completion or text"
            )),
        }
    }
}

/// A chat message with whether the loss covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainMessage {
    /// Role and content, as the template sees them.
    pub message: Message,
    /// Whether this message's tokens are labels (assistant turns with weight 1 by default).
    pub train: bool,
}

/// One training example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Example {
    /// A conversation rendered with the chat template; labels on `train` messages.
    Chat(Vec<TrainMessage>),
    /// Raw prompt text followed by raw completion text; labels on the completion.
    Completion {
        /// Context, not trained on (unless `--train-on-prompt`).
        prompt: String,
        /// Target.
        completion: String,
    },
    /// Plain text; labels on every token.
    Text(String),
}

impl Example {
    /// The format this example was written in (conversational prompt/completion is `Chat`).
    pub fn format(&self) -> Format {
        match self {
            Self::Chat(_) => Format::Chat,
            Self::Completion { .. } => Format::PromptCompletion,
            Self::Text(_) => Format::Text,
        }
    }
}

/// The roles a chat message may have.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Which format a JSON object is in, from its keys.
pub fn detect(object: &Map<String, Value>) -> Option<Format> {
    if object.contains_key("messages") {
        Some(Format::Chat)
    } else if object.contains_key("prompt") || object.contains_key("completion") {
        Some(Format::PromptCompletion)
    } else if object.contains_key("text") {
        Some(Format::Text)
    } else {
        None
    }
}

/// Parses one JSON line. `format` forces a format; `None` detects it from the keys.
/// Every problem found is returned, each naming its field.
pub fn parse_line(line: &str, format: Option<Format>) -> Result<Example, Vec<String>> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| vec![format!("invalid JSON: {e}")])?;
    let Value::Object(object) = value else {
        return Err(vec!["expected a JSON object".to_string()]);
    };
    let format = match format.or_else(|| detect(&object)) {
        Some(f) => f,
        None => {
            return Err(vec![
                "no `messages`, `prompt`/`completion` or `text` field".to_string()
            ])
        }
    };
    match format {
        Format::Chat => {
            let messages = parse_messages(object.get("messages"), "messages", true)?;
            check_conversation(&messages, "messages").map(|()| Example::Chat(messages))
        }
        Format::Text => match object.get("text") {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Example::Text(s.clone())),
            Some(Value::String(_)) => Err(vec!["text is empty".to_string()]),
            Some(other) => Err(vec![format!("text must be a string, got {}", kind(other))]),
            None => Err(vec!["missing field `text`".to_string()]),
        },
        Format::PromptCompletion => parse_prompt_completion(&object),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_prompt_completion(object: &Map<String, Value>) -> Result<Example, Vec<String>> {
    match (object.get("prompt"), object.get("completion")) {
        (Some(Value::String(prompt)), Some(Value::String(completion))) => {
            let mut errors = Vec::new();
            if completion.trim().is_empty() {
                errors.push("completion is empty".to_string());
            }
            if errors.is_empty() {
                Ok(Example::Completion {
                    prompt: prompt.clone(),
                    completion: completion.clone(),
                })
            } else {
                Err(errors)
            }
        }
        (Some(prompt @ Value::Array(_)), Some(completion @ Value::Array(_))) => {
            let mut errors = Vec::new();
            let prompt = parse_messages(Some(prompt), "prompt", false).unwrap_or_else(|e| {
                errors.extend(e);
                Vec::new()
            });
            let completion =
                parse_messages(Some(completion), "completion", true).unwrap_or_else(|e| {
                    errors.extend(e);
                    Vec::new()
                });
            if !errors.is_empty() {
                return Err(errors);
            }
            // Only the completion's assistant turns are trained on.
            let mut messages: Vec<TrainMessage> = prompt
                .into_iter()
                .map(|m| TrainMessage { train: false, ..m })
                .collect();
            messages.extend(completion);
            check_conversation(&messages, "completion").map(|()| Example::Chat(messages))
        }
        (None, _) => Err(vec!["missing field `prompt`".to_string()]),
        (_, None) => Err(vec!["missing field `completion`".to_string()]),
        (Some(p), Some(c)) => Err(vec![format!(
            "prompt and completion must both be strings or both be message lists, got {} and {}",
            kind(p),
            kind(c)
        )]),
    }
}

/// Parses a message list at `field`; assistant messages are trained on when `trainable`
/// (and their `weight` is not 0).
fn parse_messages(
    value: Option<&Value>,
    field: &str,
    trainable: bool,
) -> Result<Vec<TrainMessage>, Vec<String>> {
    let items = match value {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(vec![format!("{field} is empty")]),
        Some(other) => {
            return Err(vec![format!(
                "{field} must be an array, got {}",
                kind(other)
            )])
        }
        None => return Err(vec![format!("missing field `{field}`")]),
    };
    let mut errors = Vec::new();
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Value::Object(obj) = item else {
            errors.push(format!("{at} must be an object, got {}", kind(item)));
            continue;
        };
        let role = match obj.get("role") {
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.clone(),
            Some(Value::String(r)) => {
                errors.push(format!(
                    "{at}.role is \"{r}\"; use system, user or assistant"
                ));
                continue;
            }
            Some(other) => {
                errors.push(format!("{at}.role must be a string, got {}", kind(other)));
                continue;
            }
            None => {
                errors.push(format!("{at}: missing field `role`"));
                continue;
            }
        };
        let content = match obj.get("content") {
            Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
            Some(Value::String(_)) => {
                errors.push(format!("{at}.content is empty"));
                continue;
            }
            Some(other) => {
                errors.push(format!(
                    "{at}.content must be a string, got {}",
                    kind(other)
                ));
                continue;
            }
            None => {
                errors.push(format!("{at}: missing field `content`"));
                continue;
            }
        };
        let weight = match obj.get("weight") {
            None | Some(Value::Null) => 1,
            Some(Value::Number(n)) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                n.as_u64().unwrap_or(1)
            }
            Some(other) => {
                errors.push(format!("{at}.weight must be 0 or 1, got {other}"));
                continue;
            }
        };
        if weight == 0 && role != "assistant" {
            errors.push(format!("{at}.weight is only allowed on assistant messages"));
            continue;
        }
        let train = trainable && role == "assistant" && weight == 1;
        messages.push(TrainMessage {
            message: Message::new(role, content),
            train,
        });
    }
    if errors.is_empty() {
        Ok(messages)
    } else {
        Err(errors)
    }
}

fn check_conversation(messages: &[TrainMessage], field: &str) -> Result<(), Vec<String>> {
    if !messages.iter().any(|m| m.message.role == "assistant") {
        return Err(vec![format!("{field} has no assistant message")]);
    }
    if !messages.iter().any(|m| m.train) {
        return Err(vec![format!(
            "{field}: every assistant message has weight 0; nothing to train on"
        )]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(line: &str) -> Vec<String> {
        parse_line(line, None).expect_err("the line is invalid")
    }

    #[test]
    fn parses_each_format() {
        let chat = r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo","weight":1}]}"#;
        assert_eq!(parse_line(chat, None).map(|e| e.format()), Ok(Format::Chat));
        let pc = r#"{"prompt":"2+2=","completion":"4"}"#;
        assert_eq!(
            parse_line(pc, None).map(|e| e.format()),
            Ok(Format::PromptCompletion)
        );
        let conv = r#"{"prompt":[{"role":"user","content":"hi"}],"completion":[{"role":"assistant","content":"yo"}]}"#;
        let Ok(Example::Chat(messages)) = parse_line(conv, None) else {
            panic!("conversational prompt/completion is a chat example")
        };
        assert_eq!(
            messages.iter().map(|m| m.train).collect::<Vec<_>>(),
            [false, true]
        );
        assert_eq!(
            parse_line(r#"{"text":"hello"}"#, None),
            Ok(Example::Text("hello".into()))
        );
    }

    #[test]
    fn names_the_field_of_every_problem() {
        let line = r#"{"messages":[{"role":"bot","content":"x"},{"role":"user","content":""},{"role":"assistant","content":3}]}"#;
        assert_eq!(
            errors(line),
            [
                "messages[0].role is \"bot\"; use system, user or assistant",
                "messages[1].content is empty",
                "messages[2].content must be a string, got a number",
            ]
        );
        assert_eq!(
            errors(r#"{"messages":[{"role":"user","content":"hi"}]}"#),
            ["messages has no assistant message"]
        );
        assert!(errors("{not json")[0].starts_with("invalid JSON"));
        assert_eq!(
            errors(r#"{"foo":1}"#),
            ["no `messages`, `prompt`/`completion` or `text` field"]
        );
        assert_eq!(errors(r#"{"prompt":"a"}"#), ["missing field `completion`"]);
        assert_eq!(errors("[1,2]"), ["expected a JSON object"]);
    }
}
