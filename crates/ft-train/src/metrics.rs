//! `metrics.jsonl` (one row per optimizer step, plus evaluation rows) and `loss.svg`.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One optimizer step, as written to `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer step, from 1.
    pub step: usize,
    /// Loss of the batch this step trained on, before its update.
    pub loss: f64,
    /// Learning rate of this step's update.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (padding excluded) per second of this step.
    pub tokens_per_sec: f64,
    /// Seconds since training (or this resumed run) started.
    pub elapsed_s: f64,
    /// Share of the step's label tokens the model predicted (argmax) before the update: TRL's
    /// `mean_token_accuracy`. Absent in logs written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_accuracy: Option<f64>,
}

/// One evaluation, as written to `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// The optimizer step after which it ran.
    pub step: usize,
    /// Mean NLL over the evaluation split's label tokens.
    pub eval_loss: f64,
    /// `exp(eval_loss)`.
    pub eval_ppl: f64,
}

/// A row of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricsRow {
    /// A training step.
    Step(StepMetrics),
    /// An evaluation.
    Eval(EvalMetrics),
}

impl MetricsRow {
    fn step(&self) -> usize {
        match self {
            Self::Step(m) => m.step,
            Self::Eval(m) => m.step,
        }
    }
}

/// Reads `metrics.jsonl` (missing file: no rows; unreadable rows are skipped).
pub fn read(path: &Path) -> Vec<MetricsRow> {
    std::fs::read_to_string(path)
        .map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Keeps only rows up to `step` (resuming from a checkpoint at `step` redoes the rest).
///
/// The kept lines are copied as they are, never parsed and written again: serde_json's float
/// parsing is not correctly rounded, so a round trip can change a loss in its last digit and
/// a resumed run's log would differ from an uninterrupted one. A line torn by a crash (not
/// valid JSON) is dropped. Written through a temporary file and renamed, so a crash here
/// cannot lose the log.
pub fn truncate_after(path: &Path, step: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        if serde_json::from_str::<MetricsRow>(line).is_ok_and(|r| r.step() <= step) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Appends one row.
pub fn append(path: &Path, row: &MetricsRow) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let line = serde_json::to_string(row).unwrap_or_default();
    writeln!(file, "{line}").map_err(|e| Error::io(path, e))
}

/// An SVG line chart of training loss (and evaluation loss, if any) by step.
pub fn loss_svg(rows: &[MetricsRow]) -> String {
    let train: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| match r {
            MetricsRow::Step(m) if m.loss.is_finite() => Some((m.step as f64, m.loss)),
            _ => None,
        })
        .collect();
    let eval: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| match r {
            MetricsRow::Eval(m) if m.eval_loss.is_finite() => Some((m.step as f64, m.eval_loss)),
            _ => None,
        })
        .collect();
    let (w, h, left, right, top, bottom) = (720.0, 400.0, 64.0, 16.0, 24.0, 44.0);
    let all = train.iter().chain(&eval);
    let max_step = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo.min(hi - 1e-9), hi)
    } else {
        (0.0, 1.0)
    };
    let x = |s: f64| left + (s / max_step) * (w - left - right);
    let y = |l: f64| top + (hi - l) / (hi - lo).max(1e-12) * (h - top - bottom);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="#333"/>"##,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="end">{hi:.3}</text><text x="{}" y="{}" text-anchor="end">{lo:.3}</text><text x="{left}" y="{}">0</text><text x="{}" y="{}" text-anchor="end">step {max_step}</text><text x="{}" y="{}">loss</text>"##,
        left - 6.0,
        top + 4.0,
        left - 6.0,
        h - bottom,
        h - bottom + 16.0,
        w - right,
        h - bottom + 16.0,
        left,
        top - 8.0
    );
    for (points, color, label, dy) in [
        (&train, "#1f77b4", "train", 0.0),
        (&eval, "#ff7f0e", "eval", 16.0),
    ] {
        if points.is_empty() {
            continue;
        }
        let coords: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/><text x="{}" y="{}" fill="{color}">{label}</text>"#,
            coords.join(" "),
            w - right - 60.0,
            top + 8.0 + dy
        );
        if points.len() == 1 || label == "eval" {
            for p in points.iter() {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    x(p.0),
                    y(p.1)
                );
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_truncate() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let path = dir.path().join("metrics.jsonl");
        for step in 1..=4 {
            let row = StepMetrics {
                step,
                loss: 1.0 / step as f64,
                lr: 1e-3,
                grad_norm: 0.5,
                tokens_per_sec: 10.0,
                elapsed_s: 1.0,
                token_accuracy: Some(0.5),
            };
            append(&path, &MetricsRow::Step(row))?;
        }
        append(
            &path,
            &MetricsRow::Eval(EvalMetrics {
                step: 4,
                eval_loss: 0.3,
                eval_ppl: 0.3f64.exp(),
            }),
        )?;
        assert_eq!(read(&path).len(), 5);
        truncate_after(&path, 2)?;
        let rows = read(&path);
        assert_eq!(rows.len(), 2);
        assert!(matches!(
            rows[1],
            MetricsRow::Step(StepMetrics { step: 2, .. })
        ));
        let svg = loss_svg(&rows);
        assert!(svg.starts_with("<svg") && svg.contains("polyline"));
        Ok(())
    }

    #[test]
    fn truncating_keeps_the_logged_digits() -> Result<()> {
        // A loss from the issue: serde_json (without `float_roundtrip`) reads it back one ulp
        // off, so re-serialising the kept rows changed the log of a resumed run.
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let path = dir.path().join("metrics.jsonl");
        let line = r#"{"step":7,"loss":0.10801571421325207,"lr":0.0002,"grad_norm":0.5,"tokens_per_sec":10.0,"elapsed_s":1.0}"#;
        let torn = r#"{"step":8,"loss":0.1"#;
        std::fs::write(&path, format!("{line}\n{torn}")).map_err(|e| Error::io(&path, e))?;
        truncate_after(&path, 7)?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        assert_eq!(text, format!("{line}\n"));
        Ok(())
    }
}
