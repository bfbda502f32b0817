//! Pieces the detectors share: the "above a threshold and jumped" rule with a rising edge,
//! cumulative CPU counters with rollback handling, and the profiler capture settings.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{check_range, ConfigResult};
use crate::profiler::{self, Profile, ProfileOptions};
use crate::tracer::RunContext;

/// One watched value: fires when it is above `threshold` and rose by more than `delta` (in its
/// own unit, e.g. percentage points) since the previous sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jump {
    pub threshold: f64,
    pub delta: f64,
}

/// Rising-edge state over a set of [`Jump`] rules (any rule may fire). While any value stays
/// above its threshold the anomaly is still the same one and does not fire again; a reset (e.g.
/// after a counter rollback) forgets the previous sample.
#[derive(Debug, Clone, Default)]
pub struct JumpState {
    prev: Option<Vec<f64>>,
    active: bool,
}

impl JumpState {
    /// Feeds one sample (one value per rule). Returns the deltas when an anomaly starts.
    pub fn sample(&mut self, rules: &[Jump], values: &[f64]) -> Option<Vec<f64>> {
        let prev = self.prev.replace(values.to_vec());
        let Some(prev) = prev.filter(|p| p.len() == values.len()) else {
            // First sample: a baseline only. An agent started during a spike does not report it.
            self.active = rules.iter().zip(values).any(|(r, v)| *v > r.threshold);
            return None;
        };
        let deltas: Vec<f64> = values.iter().zip(&prev).map(|(v, p)| v - p).collect();
        let jumped = rules
            .iter()
            .zip(values)
            .zip(&deltas)
            .any(|((r, v), d)| *v > r.threshold && *d > r.delta);
        let was_active = self.active;
        self.active = rules.iter().zip(values).any(|(r, v)| *v > r.threshold);
        (jumped && !was_active).then_some(deltas)
    }

    /// Forgets the baseline (counter rollback, target restarted).
    pub fn reset(&mut self) {
        self.prev = None;
        self.active = false;
    }
}

/// Differences of cumulative counters between two samples; `None` on a rollback (any counter
/// went backwards, e.g. a cgroup was recreated), which callers treat as a new baseline.
pub fn counter_deltas(prev: &[u64], cur: &[u64]) -> Option<Vec<u64>> {
    if prev.len() != cur.len() || prev.iter().zip(cur).any(|(p, c)| c < p) {
        return None;
    }
    Some(cur.iter().zip(prev).map(|(c, p)| c - p).collect())
}

/// Rounds to 0.01 for records.
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Profiler settings shared by the CPU detectors (flattened into their config sections).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileConfig {
    /// How long a capture profiles.
    pub profile_secs: u64,
    pub profile_frequency_hz: u64,
    /// Folded stacks kept in the record (by sample count).
    pub profile_top_stacks: usize,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            profile_secs: 10,
            profile_frequency_hz: 99,
            profile_top_stacks: 200,
        }
    }
}

impl ProfileConfig {
    pub fn check(&self, section: &str) -> ConfigResult<()> {
        check_range(
            &format!("{section}.profile_secs"),
            self.profile_secs,
            1,
            300,
        )?;
        check_range(
            &format!("{section}.profile_frequency_hz"),
            self.profile_frequency_hz,
            1,
            10_000,
        )?;
        check_range(
            &format!("{section}.profile_top_stacks"),
            self.profile_top_stacks,
            1,
            100_000,
        )
    }

    /// Profiles (the whole host, or one memory cgroup) for the configured window.
    pub fn run(&self, ctx: &RunContext, memcg_id: Option<u64>) -> anyhow::Result<Profile> {
        let opts = ProfileOptions {
            frequency_hz: self.profile_frequency_hz,
            duration: Duration::from_secs(self.profile_secs),
            memcg_id,
            top_stacks: self.profile_top_stacks,
        };
        profiler::profile(&opts, ctx.symbolizer(), |d| ctx.sleep(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Jump = Jump {
        threshold: 45.0,
        delta: 20.0,
    };

    fn run(values: &[f64]) -> Vec<bool> {
        let mut s = JumpState::default();
        values
            .iter()
            .map(|v| s.sample(&[R], &[*v]).is_some())
            .collect()
    }

    #[test]
    fn fires_once_per_anomaly_on_a_jump_above_threshold() {
        // baseline, calm, jump (fire), stays high (same anomaly), higher (same), drops, jumps again.
        assert_eq!(
            run(&[5.0, 10.0, 60.0, 62.0, 90.0, 10.0, 70.0]),
            vec![false, false, true, false, false, false, true]
        );
    }

    #[test]
    fn slow_rise_and_start_in_a_spike_do_not_fire() {
        // Creeping up by less than the delta never fires, even past the threshold.
        assert_eq!(
            run(&[30.0, 40.0, 50.0, 60.0, 70.0]),
            vec![false; 5],
            "slow rise"
        );
        // Started while high: nothing until it has dropped below the threshold.
        assert_eq!(run(&[80.0, 10.0, 80.0]), vec![false, false, true]);
        assert_eq!(run(&[80.0, 50.0, 80.0]), vec![false, false, false]);
    }

    #[test]
    fn any_rule_fires_and_reset_forgets_the_baseline() {
        let rules = [
            R,
            Jump {
                threshold: 75.0,
                delta: 45.0,
            },
        ];
        let mut s = JumpState::default();
        assert!(s.sample(&rules, &[1.0, 1.0]).is_none());
        assert_eq!(s.sample(&rules, &[1.0, 80.0]), Some(vec![0.0, 79.0]));
        s.reset();
        assert!(s.sample(&rules, &[1.0, 1.0]).is_none(), "new baseline");
        assert!(s.sample(&rules, &[50.0, 1.0]).is_some());
    }

    #[test]
    fn counter_rollback_is_detected() {
        assert_eq!(counter_deltas(&[10, 20], &[15, 20]), Some(vec![5, 0]));
        assert_eq!(counter_deltas(&[10, 20], &[5, 30]), None);
        assert_eq!(counter_deltas(&[10], &[5, 30]), None);
    }
}
