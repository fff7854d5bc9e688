//! Tokenizers from an HF `tokenizer.json` or from GGUF metadata, giving transformers' ids.
//!
//! A GGUF file carries the vocabulary and merges but only names its pre-tokenizer
//! (`tokenizer.ggml.pre`); the split rules for each name follow llama.cpp's `llama-vocab.cpp`
//! (e.g. `smollm` splits every digit, then applies the GPT-2 byte-level regex, which is what the
//! model's own `tokenizer.json` does).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::chat::ChatTemplate;
use crate::{Error, Result};

/// A token's `(start, end)` byte range in the encoded text.
pub type ByteSpan = (usize, usize);

/// A tokenizer plus the special tokens and chat template that came with the model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
    /// Prepend BOS when encoding with special tokens (GGUF `add_bos_token`; an HF
    /// `tokenizer.json` does this in its own post-processor instead).
    add_bos: bool,
    chat_template: Option<String>,
    source: PathBuf,
}

fn tokenizer_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Tokenizer {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn meta_u32(value: &Value) -> Option<u32> {
    match value {
        Value::U32(v) => Some(*v),
        Value::I32(v) => u32::try_from(*v).ok(),
        Value::U64(v) => u32::try_from(*v).ok(),
        Value::I64(v) => u32::try_from(*v).ok(),
        Value::U16(v) => Some(*v as u32),
        Value::U8(v) => Some(*v as u32),
        _ => None,
    }
}

fn string_array(content: &Content, key: &str, path: &Path) -> Result<Vec<String>> {
    let values = content
        .metadata
        .get(key)
        .and_then(|v| v.to_vec().ok())
        .ok_or_else(|| tokenizer_error(path, format!("missing `{key}`")))?;
    values
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| tokenizer_error(path, format!("`{key}` holds a non-string")))
        })
        .collect()
}

/// The GPT-2 regex split plus byte-level mapping, with optional pre-splits in front.
fn byte_level_sequence(
    mut steps: Vec<PreTokenizerWrapper>,
    regex: Option<&str>,
    path: &Path,
) -> Result<PreTokenizerWrapper> {
    let byte_level = match regex {
        None => ByteLevel::new(false, true, true),
        Some(pattern) => {
            let split = Split::new(
                SplitPattern::Regex(pattern.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| tokenizer_error(path, e.to_string()))?;
            steps.push(split.into());
            ByteLevel::new(false, true, false)
        }
    };
    steps.push(byte_level.into());
    Ok(Sequence::new(steps).into())
}

/// Gemma's chat template (as google/gemma-3-*-it ship it, for text content): a system message
/// joins the first user turn, the assistant is `model`.
const GEMMA_CHAT_TEMPLATE: &str = include_str!("templates/gemma.jinja");

const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Tokenizer {
    /// Loads from a GGUF file, or from an HF directory's `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::from_hf_dir(path)
        } else {
            Self::from_gguf(path)
        }
    }

    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            cause: e,
        })?;
        let content = Content::read(&mut BufReader::new(file)).map_err(|e| {
            tokenizer_error(
                path,
                format!("not a readable GGUF file: {}", ft_core::error::one_line(&e)),
            )
        })?;
        Self::from_gguf_content(&content, path)
    }

    /// Builds the tokenizer from already-read GGUF metadata; `path` is for messages.
    pub fn from_gguf_content(content: &Content, path: &Path) -> Result<Self> {
        let meta = |key: &str| content.metadata.get(key);
        let model = meta("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or("");
        let architecture = meta("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map_or("", String::as_str);
        let gemma = model == "llama" && architecture.starts_with("gemma");
        if model != "gpt2" && !gemma {
            return Err(tokenizer_error(
                path,
                format!("GGUF tokenizer model `{model}` is not supported for architecture `{architecture}` (supported: byte-level BPE, `gpt2`, and Gemma's SentencePiece); pass an HF directory with tokenizer.json instead"),
            ));
        }
        let tokens = string_array(content, "tokenizer.ggml.tokens", path)?;
        if gemma {
            return Self::gemma_from_gguf(content, tokens, path);
        }
        let merges: Vec<(String, String)> = string_array(content, "tokenizer.ggml.merges", path)?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tokenizer_error(path, format!("bad merge `{m}`")))
            })
            .collect::<Result<_>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| tokenizer_error(path, e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);

        let pre = meta("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .map_or("default", String::as_str);
        let pre_tokenizer = match pre {
            // llama.cpp: `\p{N}` first, then the GPT-2 regex.
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => byte_level_sequence(vec![Digits::new(true).into()], None, path)?,
            "gpt2" | "default" | "mpt" | "olmo" | "jais" => {
                byte_level_sequence(Vec::new(), None, path)?
            }
            "llama-bpe" | "llama3" | "smaug-bpe" => {
                byte_level_sequence(Vec::new(), Some(REGEX_LLAMA3), path)?
            }
            "qwen2" | "deepseek-r1-qwen" => {
                inner
                    .with_normalizer(Some(NFC))
                    .map_err(|e| tokenizer_error(path, e.to_string()))?;
                byte_level_sequence(Vec::new(), Some(REGEX_QWEN2), path)?
            }
            other => {
                return Err(tokenizer_error(
                    path,
                    format!("pre-tokenizer `{other}` is not supported; pass an HF directory with tokenizer.json instead"),
                ))
            }
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));

        // Control (3) and user-defined (4) tokens are matched whole in text, as transformers does.
        if let Some(types) = meta("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
            let specials: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(ty, _)| matches!(meta_u32(ty), Some(3 | 4)))
                .map(|(_, tok)| AddedToken::from(tok.clone(), true))
                .collect();
            inner
                .add_special_tokens(specials)
                .map_err(|e| tokenizer_error(path, e.to_string()))?;
        }
        let token_of = |key: &str| {
            meta(key)
                .and_then(meta_u32)
                .and_then(|id| tokens.get(id as usize).cloned())
        };
        let eos_token = token_of("tokenizer.ggml.eos_token_id");
        let mut eos_ids: Vec<u32> = meta("tokenizer.ggml.eos_token_id")
            .and_then(meta_u32)
            .into_iter()
            .collect();
        if let Some(eot) = meta("tokenizer.ggml.eot_token_id").and_then(meta_u32) {
            if !eos_ids.contains(&eot) {
                eos_ids.push(eot);
            }
        }
        Ok(Self {
            inner,
            bos_token: token_of("tokenizer.ggml.bos_token_id"),
            eos_token,
            eos_ids,
            add_bos: meta("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(false),
            chat_template: meta("tokenizer.chat_template")
                .and_then(|v| v.to_string().ok())
                .cloned(),
            source: path.to_path_buf(),
        })
    }

    /// Gemma's SentencePiece vocabulary ([`crate::spm`]); the built-in Gemma chat template
    /// when the file has none (base models), and `<end_of_turn>` ends generation too.
    fn gemma_from_gguf(content: &Content, tokens: Vec<String>, path: &Path) -> Result<Self> {
        let meta = |key: &str| content.metadata.get(key);
        let types: Vec<u32> = match meta("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok())
        {
            Some(values) => values.iter().map(|v| meta_u32(v).unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let inner = crate::spm::gemma_tokenizer(&tokens, &types, path)?;
        let id_of = |key: &str| meta(key).and_then(meta_u32);
        let token_of = |key: &str| id_of(key).and_then(|id| tokens.get(id as usize).cloned());
        let mut eos_ids: Vec<u32> = id_of("tokenizer.ggml.eos_token_id").into_iter().collect();
        if let Some(end_of_turn) = inner.token_to_id("<end_of_turn>") {
            if !eos_ids.contains(&end_of_turn) {
                eos_ids.push(end_of_turn);
            }
        }
        let chat_template = meta("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .or_else(|| Some(GEMMA_CHAT_TEMPLATE.to_string()));
        Ok(Self {
            inner,
            bos_token: token_of("tokenizer.ggml.bos_token_id"),
            eos_token: token_of("tokenizer.ggml.eos_token_id"),
            eos_ids,
            add_bos: meta("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(true),
            chat_template,
            source: path.to_path_buf(),
        })
    }

    /// Loads `tokenizer.json`, with the chat template and special tokens of
    /// `tokenizer_config.json` when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&json)
            .map_err(|e| tokenizer_error(&json, e.to_string()))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| tokenizer_error(&config_path, e.to_string()))?,
            Err(_) => serde_json::Value::Null,
        };
        let token_field = |name: &str| match config.get(name) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(obj) => obj
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            None => None,
        };
        let chat_template = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| {
                    t.get("template")
                        .and_then(|t| t.as_str())
                        .map(str::to_string)
                }),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        let eos_token = token_field("eos_token");
        let mut eos_ids: Vec<u32> = eos_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .into_iter()
            .collect();
        // generation_config.json may list more (Gemma's <end_of_turn>, Llama 3's <|eot_id|>).
        let generation = std::fs::read_to_string(dir.join("generation_config.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        if let Some(eos) = generation.as_ref().and_then(|g| g.get("eos_token_id")) {
            let listed = match eos {
                serde_json::Value::Array(ids) => ids.iter().filter_map(|v| v.as_u64()).collect(),
                other => other.as_u64().into_iter().collect::<Vec<_>>(),
            };
            for id in listed.into_iter().filter_map(|id| u32::try_from(id).ok()) {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        Ok(Self {
            inner,
            bos_token: token_field("bos_token"),
            eos_token,
            eos_ids,
            add_bos: false,
            chat_template,
            source: dir.to_path_buf(),
        })
    }

    /// Token ids of `text`. With `add_special_tokens`, adds what the model's tokenizer adds
    /// (BOS for models that want it); special-token strings in `text` always map to their ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self.encode_with_offsets(text, add_special_tokens)?.0)
    }

    /// Token ids of `text` with each token's byte range in `text` (`(0, 0)` for an added BOS).
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<(Vec<u32>, Vec<ByteSpan>)> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Encode(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        let mut offsets = encoding.get_offsets().to_vec();
        if add_special_tokens && self.add_bos {
            if let Some(bos) = self
                .bos_token
                .as_deref()
                .and_then(|t| self.inner.token_to_id(t))
            {
                ids.insert(0, bos);
                offsets.insert(0, (0, 0));
            }
        }
        Ok((ids, offsets))
    }

    /// The end-of-sequence id appended to text and completion examples, if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_ids.first().copied()
    }

    /// Text of `ids`; `skip_special_tokens` drops control tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Encode(e.to_string()))
    }

    /// The beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
    }

    /// Ids that end generation (EOS, and end-of-turn where the model has one).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The model's chat template, compiled.
    pub fn chat_template(&self) -> Result<ChatTemplate> {
        let source = self.chat_template.as_deref().ok_or_else(|| {
            Error::Template(format!(
                "{} has no chat template; use --raw to send the prompt as plain text",
                self.source.display()
            ))
        })?;
        ChatTemplate::new(
            source,
            self.bos_token.as_deref().unwrap_or(""),
            self.eos_token.as_deref().unwrap_or(""),
        )
    }

    /// `tokenizer.json` and `tokenizer_config.json` for an HF directory (an export): the same
    /// ids, BOS added by the post-processor where this tokenizer adds it, the chat template and
    /// the special tokens in the config.
    pub fn hf_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut inner = self.inner.clone();
        let bos = self
            .bos_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t).map(|id| (t.to_string(), id)));
        if let (true, Some((token, id))) = (self.add_bos, &bos) {
            let processor = tokenizers::processors::template::TemplateProcessing::builder()
                .try_single(format!("{token} $A"))
                .and_then(|b| b.try_pair(format!("{token} $A {token} $B")))
                .map_err(|e| tokenizer_error(&self.source, e.to_string()))?
                .special_tokens(vec![(token.clone(), *id)])
                .build()
                .map_err(|e| tokenizer_error(&self.source, e.to_string()))?;
            inner.with_post_processor(Some(processor));
        }
        let json = inner
            .to_string(false)
            .map_err(|e| tokenizer_error(&self.source, e.to_string()))?;
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": false,
        });
        let config = serde_json::to_vec_pretty(&config)
            .map_err(|e| tokenizer_error(&self.source, e.to_string()))?;
        Ok(vec![
            ("tokenizer.json".to_string(), json.into_bytes()),
            ("tokenizer_config.json".to_string(), config),
        ])
    }

    /// The underlying `tokenizers` tokenizer (for offsets and batch encoding).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
