//! Promotion gates: `judge_win_rate>0.7`, `rougeL>1.2*base`, combined with `&&` and `||`
//! (`&&` binds tighter). Every adapter must pass; the exit code tells a pipeline.

use std::collections::BTreeMap;
use std::fmt;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
}

impl Op {
    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Self::Gt => left > right,
            Self::Ge => left >= right,
            Self::Lt => left < right,
            Self::Le => left <= right,
            Self::Eq => (left - right).abs() <= 1e-12,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Eq => "==",
        }
    }
}

/// The right side: a number, or a multiple of the base model's value of the same metric.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Threshold {
    Absolute(f64),
    TimesBase(f64),
}

/// One `metric op threshold`.
#[derive(Debug, Clone, PartialEq)]
struct Condition {
    metric: String,
    op: Op,
    threshold: Threshold,
}

/// A parsed gate: OR of ANDs of conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    any_of: Vec<Vec<Condition>>,
    source: String,
}

/// Why a gate expression could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--gate `{expression}`: {reason}")]
pub struct GateError {
    expression: String,
    reason: String,
}

/// The outcome of checking one model against a gate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GateResult {
    /// The model checked.
    pub model: String,
    /// Whether it passed.
    pub passed: bool,
    /// Each condition with the numbers it compared, e.g. `rougeL 0.61 > 1.2*base (0.44)`.
    pub details: Vec<String>,
}

impl Gate {
    /// Parses `expression`.
    pub fn parse(expression: &str) -> Result<Self, GateError> {
        let error = |reason: String| GateError {
            expression: expression.to_string(),
            reason,
        };
        let any_of = expression
            .split("||")
            .map(|conjunction| {
                conjunction
                    .split("&&")
                    .map(|c| parse_condition(c.trim()).map_err(&error))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            any_of,
            source: expression.to_string(),
        })
    }

    /// Every metric name the gate reads.
    pub fn metrics(&self) -> Vec<&str> {
        self.any_of
            .iter()
            .flatten()
            .map(|c| c.metric.as_str())
            .collect()
    }

    /// Checks `model`'s metrics against the gate, with `base` for `*base` thresholds.
    /// A metric that is missing fails its condition (and says so).
    pub fn check(
        &self,
        model: &str,
        metrics: &BTreeMap<String, f64>,
        base: Option<&BTreeMap<String, f64>>,
    ) -> GateResult {
        let mut details = Vec::new();
        let mut passed = false;
        for conjunction in &self.any_of {
            let mut all = true;
            for condition in conjunction {
                let (ok, detail) = condition.check(metrics, base);
                all &= ok;
                details.push(detail);
            }
            passed |= all;
        }
        GateResult {
            model: model.to_string(),
            passed,
            details,
        }
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn parse_condition(text: &str) -> Result<Condition, String> {
    let ops = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("==", Op::Eq),
        (">", Op::Gt),
        ("<", Op::Lt),
    ];
    let (at, symbol, op) = ops
        .iter()
        .filter_map(|(s, op)| text.find(s).map(|at| (at, *s, *op)))
        .min_by_key(|(at, s, _)| (*at, usize::MAX - s.len()))
        .ok_or_else(|| format!("`{text}` has no comparison (>, >=, <, <=, ==)"))?;
    let metric = text[..at].trim();
    let right = text[at + symbol.len()..].trim().replace(' ', "");
    if metric.is_empty()
        || !metric
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!("`{metric}` is not a metric name"));
    }
    let number = |s: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("`{s}` is not a number"))
    };
    let threshold = if right == "base" {
        Threshold::TimesBase(1.0)
    } else if let Some(factor) = right.strip_suffix("*base") {
        Threshold::TimesBase(number(factor)?)
    } else if let Some(factor) = right.strip_prefix("base*") {
        Threshold::TimesBase(number(factor)?)
    } else {
        Threshold::Absolute(number(&right)?)
    };
    Ok(Condition {
        metric: metric.to_string(),
        op,
        threshold,
    })
}

impl Condition {
    fn check(
        &self,
        metrics: &BTreeMap<String, f64>,
        base: Option<&BTreeMap<String, f64>>,
    ) -> (bool, String) {
        let Some(&value) = metrics.get(&self.metric) else {
            return (false, format!("{}: not measured (fails)", self.metric));
        };
        let (right, shown) = match self.threshold {
            Threshold::Absolute(v) => (v, format!("{v}")),
            Threshold::TimesBase(factor) => match base.and_then(|b| b.get(&self.metric)) {
                Some(&b) => (factor * b, format!("{factor}*base ({:.4})", factor * b)),
                None => {
                    return (
                        false,
                        format!(
                            "{}: no base value to compare with (add --base; fails)",
                            self.metric
                        ),
                    )
                }
            },
        };
        let ok = self.op.holds(value, right);
        let verdict = if ok { "pass" } else { "fail" };
        (
            ok,
            format!(
                "{} {value:.4} {} {shown}: {verdict}",
                self.metric,
                self.op.symbol()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn absolute_and_relative_thresholds() {
        let base = metrics(&[("rougeL", 0.40)]);
        let gate = Gate::parse("rougeL>1.2*base").unwrap();
        assert!(
            gate.check("a", &metrics(&[("rougeL", 0.49)]), Some(&base))
                .passed
        );
        assert!(
            !gate
                .check("a", &metrics(&[("rougeL", 0.47)]), Some(&base))
                .passed
        );
        assert!(
            !gate.check("a", &metrics(&[("rougeL", 0.9)]), None).passed,
            "no base"
        );
        let gate = Gate::parse("judge_win_rate > 0.7").unwrap();
        assert!(
            gate.check("a", &metrics(&[("judge_win_rate", 0.71)]), None)
                .passed
        );
        assert!(
            !gate
                .check("a", &metrics(&[("judge_win_rate", 0.7)]), None)
                .passed
        );
        assert!(
            !gate.check("a", &metrics(&[]), None).passed,
            "missing metric fails"
        );
    }

    #[test]
    fn or_of_ands() {
        let gate = Gate::parse("judge_win_rate>0.7 || rougeL>=1.2*base && loss<2").unwrap();
        let base = metrics(&[("rougeL", 0.5)]);
        let m = metrics(&[("judge_win_rate", 0.2), ("rougeL", 0.6), ("loss", 1.0)]);
        assert!(gate.check("a", &m, Some(&base)).passed);
        let m = metrics(&[("judge_win_rate", 0.2), ("rougeL", 0.6), ("loss", 3.0)]);
        assert!(!gate.check("a", &m, Some(&base)).passed);
        assert_eq!(gate.metrics(), vec!["judge_win_rate", "rougeL", "loss"]);
    }

    #[test]
    fn bad_expressions_are_named() {
        for bad in [
            "rougeL",
            "rougeL > x",
            "> 0.5",
            "rouge L > 1",
            "f1 > 1.2*bas",
        ] {
            let err = Gate::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
