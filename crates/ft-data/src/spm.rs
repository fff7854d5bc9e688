//! Gemma's SentencePiece tokenizer from GGUF metadata (`tokenizer.ggml.model = "llama"`), built
//! as transformers builds it from the same file (`integrations/gguf`, `gemma_tokenizer` and
//! `GemmaTokenizer`), so that both give the same ids.
//!
//! The file has tokens, scores and token types but no merges. They are recovered from the
//! vocabulary: every way of cutting a token into two tokens is a merge, ranked by the merged
//! token's place in the file (Gemma's scores do not follow its merge order; the file order
//! does), longer left pieces first among a token's cuts. The model is BPE with byte fallback;
//! spaces become `▁` before it and come back in decoding. Control tokens are special, user-defined
//! ones (`\n\n`, `<start_of_image>`-like markup) are matched whole but are not special.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, SplitDelimiterBehavior};

use crate::{Error, Result};

/// GGUF token types (llama.cpp's `llama_token_type`).
const CONTROL: u32 = 3;
const USER_DEFINED: u32 = 4;

fn build_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Tokenizer {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The Gemma tokenizer of `tokens` (in id order) with their GGUF `types`.
pub(crate) fn gemma_tokenizer(
    tokens: &[String],
    types: &[u32],
    path: &Path,
) -> Result<tokenizers::Tokenizer> {
    // A token of spaces only is stored with real spaces; the model looks it up as `▁`s.
    let tokens: Vec<String> = tokens
        .iter()
        .map(|t| {
            if !t.is_empty() && t.chars().all(|c| c == ' ') {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges_by_file_order(&tokens);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.clone(), merges)
        .unk_token("<unk>".to_string())
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| build_error(path, e.to_string()))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let to_marker = Replace::new(" ", "\u{2581}").map_err(|e| build_error(path, e.to_string()))?;
    inner
        .with_normalizer(Some(to_marker))
        .map_err(|e| build_error(path, e.to_string()))?;
    let split = Split::new(
        SplitPattern::String(" ".to_string()),
        SplitDelimiterBehavior::MergedWithPrevious,
        false,
    )
    .map_err(|e| build_error(path, e.to_string()))?;
    inner.with_pre_tokenizer(Some(split));
    let from_marker =
        Replace::new("\u{2581}", " ").map_err(|e| build_error(path, e.to_string()))?;
    inner.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(from_marker),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])));

    let of_type = |wanted: u32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .filter(|(_, &ty)| ty == wanted)
            .map(|(t, _)| AddedToken::from(t.clone(), special).normalized(false))
            .collect()
    };
    inner
        .add_special_tokens(of_type(CONTROL, true))
        .map_err(|e| build_error(path, e.to_string()))?;
    inner
        .add_tokens(of_type(USER_DEFINED, false))
        .map_err(|e| build_error(path, e.to_string()))?;
    Ok(inner)
}

/// Every cut of a token into two tokens, best first: by the merged token's position in the
/// file, then longer left piece first (transformers' `generate_merges` with scores `-index`).
fn merges_by_file_order(tokens: &[String]) -> Vec<(String, String)> {
    // As a Python dict built in file order: a repeated token keeps its first place in the
    // iteration and takes the last index.
    let mut last_index: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if last_index.insert(t.as_str(), i).is_none() {
            order.push(t.as_str());
        }
    }
    let mut ranked: Vec<(usize, usize, usize, &str, &str)> = Vec::new();
    for merged in order {
        let rank = last_index[merged];
        for (cut, _) in merged.char_indices().skip(1) {
            let (left, right) = merged.split_at(cut);
            if last_index.contains_key(left) && last_index.contains_key(right) {
                ranked.push((
                    rank,
                    left.chars().count(),
                    right.chars().count(),
                    left,
                    right,
                ));
            }
        }
    }
    // Python sorts by (-index, len(left), len(right)) descending, stably.
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    ranked
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_file_order_then_longer_left_pieces() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let merges = merges_by_file_order(&tokens);
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(l, r)| (l.as_str(), r.as_str()))
            .collect();
        assert_eq!(pairs, [("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c")]);
    }

    #[test]
    fn spaces_become_markers_and_come_back() -> Result<()> {
        let tokens: Vec<String> = ["<unk>", "\u{2581}", "h", "i", "\u{2581}h", "  "]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let types = [2, 1, 1, 1, 1, 1];
        let tokenizer = gemma_tokenizer(&tokens, &types, Path::new("test.gguf"))?;
        let ids = tokenizer
            .encode("hi hi  ", false)
            .map_err(|e| Error::Encode(e.to_string()))?;
        assert_eq!(ids.get_ids(), [2, 3, 4, 3, 5]);
        let text = tokenizer
            .decode(ids.get_ids(), false)
            .map_err(|e| Error::Encode(e.to_string()))?;
        assert_eq!(text, "hi hi  ");
        Ok(())
    }
}
