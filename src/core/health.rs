//! Health checks, decided per probe. Pure: from a task's check, its health so far, when its
//! container started and the probe's result, its next health; and whether a probe is due.
//! The worker runs the probes (`ContainerRuntime::exec`) and reports a task `starting` until
//! it is healthy, then `running`; an unhealthy task is stopped and reported failed, and the
//! managers restart it as its restart policy says.
//!
//! As Docker's: a failed probe inside the start period does not count; after it, `retries`
//! failures in a row make the task unhealthy; one success makes it healthy. Unlike Docker,
//! until the first success a probe runs every `min(interval, STARTING_PROBE_MS)`, so that a
//! rolling update waiting for health does not wait a whole interval per slot; those extra
//! probes count as failures no more often than once an interval, so a task gets as long to
//! come up as with Docker's timing.

use serde::{Deserialize, Serialize};

/// Probe period before the first success (Docker's `--health-start-interval`, fixed).
pub const STARTING_PROBE_MS: u64 = 1_000;
/// Output of a probe kept for the task's message.
pub const MAX_PROBE_OUTPUT_BYTES: usize = 512;

/// A service's health check (`--health-*`), or the image's HEALTHCHECK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Run inside the container, exec form (`--health-cmd STRING` is `sh -c STRING`).
    pub cmd: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            cmd: Vec::new(),
            interval_ms: 30_000,
            timeout_ms: 30_000,
            retries: 3,
            start_period_ms: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthStatus {
    #[default]
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// A task's health as its worker tracks it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Failed probes in a row (those inside the start period not counted).
    pub failing_streak: u32,
    /// When the last probe was started (wall clock ms); 0: none yet.
    pub last_probe_ms: i64,
    /// What the last probe said: its exit code and output, or why it did not run.
    pub last_result: String,
    /// When the last failure that counted was probed (0: none).
    #[serde(default)]
    pub last_counted_ms: i64,
}

/// What one probe gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Exited {
        code: i32,
        output: String,
    },
    /// It did not finish within the timeout (it was killed).
    TimedOut,
    /// It could not be run (the runtime refused, the container is gone).
    Error(String),
}

/// Whether a probe is due at `now_ms` for a container that started at `started_ms`.
pub fn due(check: &HealthCheck, h: &Health, started_ms: i64, now_ms: i64) -> bool {
    if h.status == HealthStatus::Unhealthy {
        return false;
    }
    let period = if h.status == HealthStatus::Healthy {
        check.interval_ms
    } else {
        check.interval_ms.min(STARTING_PROBE_MS)
    };
    let from = if h.last_probe_ms == 0 {
        started_ms
    } else {
        h.last_probe_ms
    };
    now_ms.saturating_sub(from) >= period as i64 || now_ms < from
}

/// The health after a probe that was started at `h.last_probe_ms`.
pub fn after_probe(check: &HealthCheck, h: &Health, started_ms: i64, probe: &Probe) -> Health {
    let mut next = h.clone();
    let in_start_period = h.last_probe_ms.saturating_sub(started_ms) < check.start_period_ms as i64;
    let (ok, said) = match probe {
        Probe::Exited { code: 0, output } => (true, format!("exit code 0: {}", short(output))),
        Probe::Exited { code, output } => (false, format!("exit code {code}: {}", short(output))),
        Probe::TimedOut => (false, format!("timed out after {} ms", check.timeout_ms)),
        Probe::Error(e) => (false, format!("could not run: {}", short(e))),
    };
    next.last_result = said;
    if ok {
        next.status = HealthStatus::Healthy;
        next.failing_streak = 0;
    } else if !in_start_period || h.status == HealthStatus::Healthy {
        let since = h.last_counted_ms.max(started_ms);
        let spaced = h.last_probe_ms.saturating_sub(since) >= check.interval_ms as i64;
        if h.status == HealthStatus::Healthy || spaced {
            next.failing_streak += 1;
            next.last_counted_ms = h.last_probe_ms;
            if next.failing_streak >= check.retries.max(1) {
                next.status = HealthStatus::Unhealthy;
            }
        }
    }
    next
}

fn short(s: &str) -> String {
    let s = s.trim();
    let cut = super::limits::prefix(s, MAX_PROBE_OUTPUT_BYTES);
    if cut.len() < s.len() {
        format!("{cut}...")
    } else {
        cut.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u32, start_period_ms: u64) -> HealthCheck {
        HealthCheck {
            cmd: vec!["true".into()],
            interval_ms: 10_000,
            timeout_ms: 2_000,
            retries,
            start_period_ms,
        }
    }

    fn fail() -> Probe {
        Probe::Exited {
            code: 1,
            output: "connection refused".into(),
        }
    }

    fn pass() -> Probe {
        Probe::Exited {
            code: 0,
            output: String::new(),
        }
    }

    /// Runs probes at the given times (ms after the start at 0); the statuses after each.
    fn run(c: &HealthCheck, probes: &[(i64, Probe)]) -> Vec<HealthStatus> {
        let mut h = Health::default();
        probes
            .iter()
            .map(|(at, p)| {
                h.last_probe_ms = *at;
                h = after_probe(c, &h, 0, p);
                h.status
            })
            .collect()
    }

    #[test]
    fn probes_decide_health() {
        use HealthStatus::*;
        type Case = (&'static str, HealthCheck, Vec<(i64, Probe)>, Vec<HealthStatus>);
        let cases: Vec<Case> = vec![
            (
                "one success is healthy",
                check(3, 0),
                vec![(1_000, pass())],
                vec![Healthy],
            ),
            (
                "retries failures in a row are unhealthy",
                check(3, 0),
                vec![(10_000, fail()), (20_000, fail()), (30_000, Probe::TimedOut)],
                vec![Starting, Starting, Unhealthy],
            ),
            (
                "the faster probes before the first success count once an interval",
                check(2, 0),
                vec![
                    (1_000, fail()),
                    (2_000, fail()),
                    (10_000, fail()),
                    (11_000, fail()),
                    (20_000, fail()),
                ],
                vec![Starting, Starting, Starting, Starting, Unhealthy],
            ),
            (
                "a success resets the streak",
                check(2, 0),
                vec![
                    (10_000, fail()),
                    (12_000, pass()),
                    (22_000, fail()),
                    (32_000, pass()),
                ],
                vec![Starting, Healthy, Healthy, Healthy],
            ),
            (
                "failures in the start period do not count",
                check(1, 15_000),
                vec![
                    (1_000, fail()),
                    (10_000, fail()),
                    (14_000, fail()),
                    (16_000, fail()),
                ],
                vec![Starting, Starting, Starting, Unhealthy],
            ),
            (
                "a success in the start period is healthy at once",
                check(1, 60_000),
                vec![(1_000, fail()), (2_000, pass())],
                vec![Starting, Healthy],
            ),
            (
                "a probe that cannot run counts as failed",
                check(1, 0),
                vec![(10_000, Probe::Error("container gone".into()))],
                vec![Unhealthy],
            ),
            (
                "a healthy task fails after retries, start period or not",
                check(2, 60_000),
                vec![(1_000, pass()), (11_000, fail()), (21_000, fail())],
                vec![Healthy, Healthy, Unhealthy],
            ),
        ];
        for (name, c, probes, want) in cases {
            assert_eq!(run(&c, &probes), want, "{name}");
        }
    }

    #[test]
    fn probes_are_due_faster_until_healthy() {
        let c = check(3, 0);
        let mut h = Health::default();
        // (status, last probe, now, due)
        let cases = [
            (HealthStatus::Starting, 0, 999, false),
            (HealthStatus::Starting, 0, 1_000, true),
            (HealthStatus::Starting, 5_000, 5_999, false),
            (HealthStatus::Starting, 5_000, 6_000, true),
            (HealthStatus::Healthy, 5_000, 14_999, false),
            (HealthStatus::Healthy, 5_000, 15_000, true),
            (HealthStatus::Unhealthy, 5_000, 60_000, false),
            // The clock went back: probe rather than wait for it to catch up.
            (HealthStatus::Healthy, 50_000, 10_000, true),
        ];
        for (status, last, now, want) in cases {
            h.status = status;
            h.last_probe_ms = last;
            assert_eq!(due(&c, &h, 0, now), want, "{status:?} last {last} now {now}");
        }
        assert!(after_probe(&c, &h, 0, &fail())
            .last_result
            .contains("connection refused"));
    }
}
