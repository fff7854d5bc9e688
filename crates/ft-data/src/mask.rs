//! Where each trained assistant turn sits in a rendered conversation, in time linear in the
//! conversation's size.
//!
//! The span of assistant turn `i` is defined as the text between the rendering of
//! `messages[..i]` with a generation prompt and the rendering of `messages[..=i]`, both
//! prefixes of the full rendering, with surrounding whitespace trimmed ([`spans_by_prefix`]).
//! That works for any template, but computed literally it renders the whole prefix twice per
//! turn: quadratic (a 10,000-turn line took minutes, an easy denial of service on uploads).
//!
//! [`assistant_spans`] keeps the definition and makes it linear: one more rendering with
//! private-use markers around each trained turn's content locates every content; the text the
//! template puts between the generation prompt and the content, and between the content and the
//! end of the turn, is learned from the last turn by the definition itself (two renderings) and
//! checked at every turn. When anything does not fit (the template rewrites content, the learned
//! text is missing somewhere, the first turn disagrees with the definition), the definition is
//! used, but only within [`RENDER_BUDGET`]: past that the line is refused instead of taking
//! minutes.

use std::ops::Range;

use crate::chat::{ChatTemplate, Message};
use crate::{Error, Result};

/// Bytes of template output the literal definition may render for one line before the line is
/// refused (about 2 s of rendering). Small conversations always use the definition directly.
pub const RENDER_BUDGET: usize = 32 << 20;

/// Below this cost (bytes rendered by the definition) the definition is simply used.
const DIRECT_COST: usize = 1 << 20;

/// Private-use code points marking the start and end of a trained turn's content.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// Renders `messages` and finds the byte span of each assistant turn in `trained` (indices into
/// `messages`, ascending). The spans are those of [`spans_by_prefix`], computed in linear time
/// for templates that render each turn's content verbatim.
pub fn assistant_spans(
    template: &ChatTemplate,
    messages: &[Message],
    trained: &[usize],
) -> Result<(String, Vec<Range<usize>>)> {
    let full = template.render(messages, false)?;
    let cost = full.len().saturating_mul(2 * trained.len());
    if cost <= DIRECT_COST {
        let spans = spans_by_prefix(template, messages, trained, &full)?;
        return Ok((full, spans));
    }
    if let Some(spans) = spans_by_markers(template, messages, trained, &full)? {
        return Ok((full, spans));
    }
    if cost > RENDER_BUDGET {
        return Err(Error::Template(format!(
            "cannot locate the {} assistant turns of this conversation in linear time with this chat template (it does not render each turn's content verbatim), and the conversation is too long for the slow way; split it into shorter conversations",
            trained.len()
        )));
    }
    let spans = spans_by_prefix(template, messages, trained, &full)?;
    Ok((full, spans))
}

/// The definition: for each turn in `trained`, render the prefix before it (with a generation
/// prompt) and through it, and take the trimmed difference. `full` is the whole rendering.
pub fn spans_by_prefix(
    template: &ChatTemplate,
    messages: &[Message],
    trained: &[usize],
    full: &str,
) -> Result<Vec<Range<usize>>> {
    let mut spans = Vec::with_capacity(trained.len());
    for &i in trained {
        let (before, through) = prefix_lengths(template, messages, i, full)?;
        let segment = &full[before..through];
        let start = before + (segment.len() - segment.trim_start().len());
        let end = before + segment.trim_end().len();
        if start < end {
            spans.push(start..end);
        }
    }
    Ok(spans)
}

/// Lengths of `render(messages[..i], true)` and `render(messages[..=i], false)`, checked to be
/// prefixes of `full`.
fn prefix_lengths(
    template: &ChatTemplate,
    messages: &[Message],
    i: usize,
    full: &str,
) -> Result<(usize, usize)> {
    let before = template.render(&messages[..i], true)?;
    let through = template.render(&messages[..=i], false)?;
    if !full.starts_with(&before) || !full.starts_with(&through) || through.len() < before.len() {
        return Err(Error::Template(format!(
            "cannot locate assistant message {i}: the template does not render a conversation as a prefix of its continuation (does it rewrite earlier turns?)"
        )));
    }
    Ok((before.len(), through.len()))
}

/// The linear path; `None` when the template does not fit it (then the caller uses the
/// definition).
pub fn spans_by_markers(
    template: &ChatTemplate,
    messages: &[Message],
    trained: &[usize],
    full: &str,
) -> Result<Option<Vec<Range<usize>>>> {
    let (Some(&first), Some(&last)) = (trained.first(), trained.last()) else {
        return Ok(Some(Vec::new()));
    };
    if messages.iter().any(|m| m.content.contains([OPEN, CLOSE])) {
        return Ok(None);
    }
    let mut marked = messages.to_vec();
    for &i in trained {
        let content = &messages[i].content;
        let core = content.trim();
        // Whitespace stays outside the markers so that `.strip()`/`| trim` still removes it.
        let lead = &content[..content.len() - content.trim_start().len()];
        let trail = &content[lead.len() + core.len()..];
        marked[i].content = format!("{lead}{OPEN}{core}{CLOSE}{trail}");
    }
    let rendered = template.render(&marked, false)?;
    let Some(contents) = content_ranges(&rendered, trained.len()) else {
        return Ok(None);
    };
    if rendered.replace([OPEN, CLOSE], "") != full {
        return Ok(None);
    }
    // Learn the text around the content from the last turn, by the definition.
    let Some(last_content) = contents.last().cloned() else {
        return Ok(None);
    };
    let (before, through) = if last + 1 == messages.len() {
        // The usual case: the prefix through the last turn is the whole conversation, already
        // rendered (one render of the whole line saved).
        let before = template.render(&messages[..last], true)?;
        if !full.starts_with(&before) {
            return Ok(None);
        }
        (before.len(), full.len())
    } else {
        prefix_lengths(template, messages, last, full)?
    };
    if before > last_content.start || through < last_content.end {
        return Ok(None);
    }
    // The non-whitespace text between the generation prompt and the content (usually none),
    // and between the content and the end of the turn (the end-of-turn marker).
    let opening = full[before..last_content.start].trim();
    let closing = full[last_content.end..through].trim();
    let mut spans = Vec::with_capacity(trained.len());
    for content in &contents {
        let Some(span) = place(full, content, opening, closing) else {
            return Ok(None);
        };
        spans.push(span);
    }
    // The first turn is cheap to check by the definition; a template whose turns differ
    // (e.g. only the last one is special) is caught here or by `place`.
    let check = spans_by_prefix(template, messages, &[first], full)?;
    if check.first() != spans.first() {
        return Ok(None);
    }
    Ok(Some(spans))
}

/// The span of one turn whose content is at `content` in `full`: `opening` just before it and
/// `closing` just after it (each past optional whitespace), or `None` if they are not there.
fn place(full: &str, content: &Range<usize>, opening: &str, closing: &str) -> Option<Range<usize>> {
    let start = if opening.is_empty() {
        content.start
    } else {
        let head = full.get(..content.start)?.trim_end();
        head.strip_suffix(opening)?.len()
    };
    let end = if closing.is_empty() {
        content.end
    } else {
        let tail = full.get(content.end..)?;
        let rest = tail.trim_start();
        let skipped = tail.len() - rest.len();
        rest.starts_with(closing)
            .then_some(content.end + skipped + closing.len())?
    };
    (start < end).then_some(start..end)
}

/// Byte ranges (in the text with markers removed) between each `OPEN`/`CLOSE` pair of
/// `rendered`; `None` unless there are exactly `expected` well-nested pairs.
fn content_ranges(rendered: &str, expected: usize) -> Option<Vec<Range<usize>>> {
    let mut ranges = Vec::with_capacity(expected);
    let mut removed = 0;
    let mut open: Option<usize> = None;
    for (at, c) in rendered.char_indices() {
        match c {
            OPEN if open.is_none() => open = Some(at - removed),
            CLOSE => ranges.push(open.take()?..at - removed),
            OPEN => return None,
            _ => continue,
        }
        removed += c.len_utf8();
    }
    (open.is_none() && ranges.len() == expected).then_some(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn conversation(turns: usize) -> (Vec<Message>, Vec<usize>) {
        let mut messages = Vec::new();
        for i in 0..turns {
            messages.push(Message::new("user", format!(" question {i} ")));
            messages.push(Message::new("assistant", format!("answer {i}\n")));
        }
        let trained = (0..turns).map(|i| 2 * i + 1).collect();
        (messages, trained)
    }

    #[test]
    fn markers_give_the_definition_s_spans() -> Result<()> {
        let template = ChatTemplate::new(CHATML, "", "")?;
        let (messages, trained) = conversation(20);
        let full = template.render(&messages, false)?;
        let exact = spans_by_prefix(&template, &messages, &trained, &full)?;
        let fast = spans_by_markers(&template, &messages, &trained, &full)?;
        assert_eq!(fast.as_ref(), Some(&exact));
        assert_eq!(&full[exact[0].clone()], "answer 0<|im_end|>");
        Ok(())
    }

    #[test]
    fn a_template_that_rewrites_content_falls_back_to_the_definition() -> Result<()> {
        // Reversing the content scrambles the markers: the linear path must give up.
        let source = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | reverse }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let template = ChatTemplate::new(source, "", "")?;
        let (messages, trained) = conversation(3);
        let full = template.render(&messages, false)?;
        assert_eq!(
            spans_by_markers(&template, &messages, &trained, &full)?,
            None
        );
        let (_, spans) = assistant_spans(&template, &messages, &trained)?;
        assert_eq!(
            spans,
            spans_by_prefix(&template, &messages, &trained, &full)?
        );
        Ok(())
    }

    #[test]
    fn ten_thousand_turns_take_a_constant_number_of_renders() -> Result<()> {
        let template = ChatTemplate::new(CHATML, "", "")?;
        let (messages, trained) = conversation(10_000);
        let (full, spans) = assistant_spans(&template, &messages, &trained)?;
        assert_eq!(spans.len(), 10_000);
        assert_eq!(&full[spans[9_999].clone()], "answer 9999<|im_end|>");
        // Full, marked, one for the last turn, two for the first: never one per turn.
        assert!(template.render_count() <= 8, "{}", template.render_count());
        Ok(())
    }
}
