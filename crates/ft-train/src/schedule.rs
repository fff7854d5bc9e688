//! Learning-rate schedules with linear warmup, as `transformers.get_*_schedule_with_warmup`.

use serde::{Deserialize, Serialize};

/// The decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Half a cosine from the peak to 0.
    #[default]
    Cosine,
    /// Straight line from the peak to 0.
    Linear,
    /// The peak throughout.
    Constant,
}

impl std::str::FromStr for SchedulerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "linear" => Ok(Self::Linear),
            "constant" => Ok(Self::Constant),
            other => Err(format!(
                "unknown scheduler `{other}`; use cosine, linear or constant"
            )),
        }
    }
}

/// A schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// The peak learning rate.
    pub peak: f64,
    /// Steps of linear warmup from 0.
    pub warmup_steps: usize,
    /// All optimizer steps.
    pub total_steps: usize,
    /// Decay shape.
    pub kind: SchedulerKind,
}

impl LrSchedule {
    /// The learning rate for optimizer step `step` (1-based), i.e. transformers' lambda at
    /// `step - 1`, the scheduler's count before that step.
    pub fn lr(&self, step: usize) -> f64 {
        let current = step.saturating_sub(1) as f64;
        let warmup = self.warmup_steps as f64;
        if current < warmup {
            return self.peak * current / warmup.max(1.0);
        }
        let total = self.total_steps as f64;
        let progress = (current - warmup) / (total - warmup).max(1.0);
        let factor = match self.kind {
            SchedulerKind::Constant => 1.0,
            SchedulerKind::Linear => ((total - current) / (total - warmup).max(1.0)).max(0.0),
            SchedulerKind::Cosine => {
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        };
        self.peak * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_lambdas() {
        // get_cosine_schedule_with_warmup(opt, 0, 30): step k uses 0.5*(1+cos(pi*(k-1)/30)).
        let cosine = LrSchedule {
            peak: 1e-3,
            warmup_steps: 0,
            total_steps: 30,
            kind: SchedulerKind::Cosine,
        };
        assert_eq!(cosine.lr(1), 1e-3);
        assert!((cosine.lr(16) - 0.5e-3).abs() < 1e-12);
        // Warmup: step 1 trains at 0, step 3 at 2/4 of the peak.
        let linear = LrSchedule {
            peak: 1.0,
            warmup_steps: 4,
            total_steps: 10,
            kind: SchedulerKind::Linear,
        };
        assert_eq!(linear.lr(1), 0.0);
        assert_eq!(linear.lr(3), 0.5);
        assert!((linear.lr(5) - 1.0).abs() < 1e-12);
        assert!((linear.lr(8) - 0.5).abs() < 1e-12);
    }
}
