//! `service update`, `service rollback` and the rollout settings of `service create`: the
//! flags, the spec changes they make, and the wait that follows a change (progress per slot,
//! an exit code CI can trust).

use super::{key_values, RestartCondition};
use crate::client::Client;
use crate::core::limits::short_id;
use crate::proto::v1 as pb;
use clap::{Args, ValueEnum};
use std::io::{IsTerminal, Write};
use std::time::Duration;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    StopFirst,
    StartFirst,
}

/// Rollout settings; unset flags keep what the service has (the defaults at create).
#[derive(Args, Debug, Default)]
pub struct RolloutArgs {
    /// Slots replaced at once during an update (0 = all) [default: 1].
    #[arg(long)]
    pub update_parallelism: Option<u32>,
    /// Wait between one slot finishing and the next starting, e.g. 10s [default: 0s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub update_delay: Option<Duration>,
    /// What a failed new task does to the update [default: pause].
    #[arg(long, value_enum)]
    pub update_failure_action: Option<FailureAction>,
    /// How long a new task must keep running before its slot counts as done [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub update_monitor: Option<Duration>,
    /// Fraction of slots that may fail before the failure action, 0 to 1 [default: 0].
    #[arg(long, value_parser = parse_ratio)]
    pub update_max_failure_ratio: Option<u32>,
    /// Stop the old task first (its image pulled beforehand) or start the new one first
    /// [default: stop-first].
    #[arg(long, value_enum)]
    pub update_order: Option<Order>,
    /// How long a new task may take to be pulled and reach running [default: 5m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub update_timeout: Option<Duration>,
    /// The same settings for a rollback.
    #[arg(long)]
    pub rollback_parallelism: Option<u32>,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub rollback_delay: Option<Duration>,
    #[arg(long, value_enum)]
    pub rollback_failure_action: Option<FailureAction>,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub rollback_monitor: Option<Duration>,
    #[arg(long, value_parser = parse_ratio)]
    pub rollback_max_failure_ratio: Option<u32>,
    #[arg(long, value_enum)]
    pub rollback_order: Option<Order>,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub rollback_timeout: Option<Duration>,
}

/// A ratio 0..=1 as thousandths.
fn parse_ratio(s: &str) -> Result<u32, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok((r * 1000.0).round() as u32),
        _ => Err(format!(
            "{s:?} is not a fraction from 0 to 1; use for example 0.2"
        )),
    }
}

/// How often the CLI reads the service while it waits.
const POLL_MS: u64 = 200;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The defaults (as the managers apply them to an absent config).
pub fn default_config() -> pb::UpdateConfig {
    pb::UpdateConfig {
        parallelism: 1,
        delay_ms: 0,
        failure_action: pb::FailureAction::Pause as i32,
        monitor_ms: 5_000,
        max_failure_permille: 0,
        order: pb::UpdateOrder::StopFirst as i32,
        timeout_ms: 300_000,
    }
}

impl RolloutArgs {
    /// Sets the given flags on `spec`'s update and rollback configs.
    pub fn apply(&self, spec: &mut pb::ServiceSpec) {
        let action = |a: FailureAction| match a {
            FailureAction::Pause => pb::FailureAction::Pause as i32,
            FailureAction::Continue => pb::FailureAction::Continue as i32,
            FailureAction::Rollback => pb::FailureAction::Rollback as i32,
        };
        let order = |o: Order| match o {
            Order::StopFirst => pb::UpdateOrder::StopFirst as i32,
            Order::StartFirst => pb::UpdateOrder::StartFirst as i32,
        };
        #[allow(clippy::type_complexity)]
        let sets: [(
            &mut Option<pb::UpdateConfig>,
            Option<u32>,
            Option<Duration>,
            Option<FailureAction>,
            Option<Duration>,
            Option<u32>,
            Option<Order>,
            Option<Duration>,
        ); 2] = [
            (
                &mut spec.update_config,
                self.update_parallelism,
                self.update_delay,
                self.update_failure_action,
                self.update_monitor,
                self.update_max_failure_ratio,
                self.update_order,
                self.update_timeout,
            ),
            (
                &mut spec.rollback_config,
                self.rollback_parallelism,
                self.rollback_delay,
                self.rollback_failure_action,
                self.rollback_monitor,
                self.rollback_max_failure_ratio,
                self.rollback_order,
                self.rollback_timeout,
            ),
        ];
        for (cfg, parallelism, delay, failure, monitor, ratio, ord, timeout) in sets {
            let c = cfg.get_or_insert_with(default_config);
            if let Some(v) = parallelism {
                c.parallelism = v;
            }
            if let Some(v) = delay {
                c.delay_ms = ms(v);
            }
            if let Some(v) = failure {
                c.failure_action = action(v);
            }
            if let Some(v) = monitor {
                c.monitor_ms = ms(v);
            }
            if let Some(v) = ratio {
                c.max_failure_permille = v;
            }
            if let Some(v) = ord {
                c.order = order(v);
            }
            if let Some(v) = timeout {
                c.timeout_ms = ms(v);
            }
        }
    }
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    pub service: String,
    /// New image.
    #[arg(long)]
    pub image: Option<String>,
    /// Add or change an environment variable KEY=VALUE (repeatable).
    #[arg(long = "env-add")]
    pub env_add: Vec<String>,
    /// Remove an environment variable (repeatable).
    #[arg(long = "env-rm")]
    pub env_rm: Vec<String>,
    /// New replica count (no rolling update by itself).
    #[arg(long, allow_negative_numbers = true)]
    pub replicas: Option<i64>,
    /// Add a placement constraint (repeatable).
    #[arg(long = "constraint-add")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint, as written (repeatable).
    #[arg(long = "constraint-rm")]
    pub constraint_rm: Vec<String>,
    #[command(flatten)]
    pub resources: super::ResourceArgs,
    #[arg(long, value_enum)]
    pub restart_condition: Option<RestartCondition>,
    #[arg(long)]
    pub restart_max_attempts: Option<u32>,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub restart_delay: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub stop_timeout: Option<Duration>,
    /// Replace every task even if nothing they run changed.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// New command and arguments (replacing the old ones).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Return at once instead of waiting (for every replica to run after a create, for the
    /// rollout to end after an update or rollback).
    #[arg(long, short = 'd')]
    pub detach: bool,
}

impl UpdateArgs {
    /// `spec` with the flags' changes.
    pub fn apply(&self, spec: &mut pb::ServiceSpec) -> anyhow::Result<()> {
        if let Some(i) = &self.image {
            spec.image = i.clone();
        }
        for k in &self.env_rm {
            if spec.env.remove(k).is_none() {
                anyhow::bail!("--env-rm {k}: the service has no environment variable {k:?}");
            }
        }
        spec.env.extend(key_values("--env-add", &self.env_add)?);
        if let Some(r) = self.replicas {
            spec.replicas = r;
        }
        for c in &self.constraint_rm {
            let before = spec.constraints.len();
            spec.constraints.retain(|x| x != c);
            if spec.constraints.len() == before {
                anyhow::bail!(
                    "--constraint-rm {c:?}: the service has no such constraint; it has {:?}",
                    spec.constraints
                );
            }
        }
        spec.constraints.extend(self.constraint_add.iter().cloned());
        self.resources.apply(spec);
        let rp = spec.restart_policy.get_or_insert_with(Default::default);
        if let Some(c) = self.restart_condition {
            rp.condition = super::restart_condition(c) as i32;
        }
        if let Some(v) = self.restart_max_attempts {
            rp.max_attempts = v;
        }
        if let Some(v) = self.restart_delay {
            rp.delay_ms = ms(v);
        }
        if let Some(v) = self.stop_timeout {
            spec.stop_timeout_ms = ms(v);
        }
        if !self.command.is_empty() {
            spec.command = self.command.clone();
            spec.args.clear();
        }
        self.rollout.apply(spec);
        self.health.apply(spec)
    }
}

fn state_of(u: &pb::UpdateStatus) -> pb::UpdateState {
    pb::UpdateState::try_from(u.state).unwrap_or(pb::UpdateState::Unspecified)
}

pub fn state_name(u: &pb::UpdateStatus) -> String {
    state_of(u)
        .as_str_name()
        .trim_start_matches("UPDATE_STATE_")
        .to_ascii_lowercase()
}

fn in_progress(u: &pb::UpdateStatus) -> bool {
    matches!(
        state_of(u),
        pb::UpdateState::Updating | pb::UpdateState::RollbackStarted
    )
}

fn is_rollback(u: &pb::UpdateStatus) -> bool {
    matches!(
        state_of(u),
        pb::UpdateState::RollbackStarted
            | pb::UpdateState::RollbackPaused
            | pb::UpdateState::RollbackCompleted
    )
}

/// One line per slot: where the rollout is with it.
fn slot_lines(s: &pb::Service, u: &pb::UpdateStatus) -> Vec<String> {
    let replicas = u32::try_from(s.spec.as_ref().map_or(0, |x| x.replicas)).unwrap_or(0);
    (1..=replicas)
        .map(|slot| {
            let what = if u.done_slots.contains(&slot) {
                format!("done (version {})", u.to_version)
            } else if let Some(f) = u.failed.iter().find(|f| f.slot == slot) {
                format!("failed: {}", f.reason)
            } else if let Some(f) = u.in_flight.iter().find(|f| f.slot == slot) {
                match f.running_since_ms {
                    Some(_) => format!("running task {}, monitoring", short_id(&f.new_task_id)),
                    None => format!("starting task {}", short_id(&f.new_task_id)),
                }
            } else if in_progress(u) {
                "waiting".to_string()
            } else {
                "-".to_string()
            };
            format!("  slot {slot:>3}: {what}")
        })
        .collect()
}

/// Polls the service until the rollout that `started` began has ended, showing progress
/// (lines rewritten in place on a terminal, a line per change otherwise). An update that
/// paused or was rolled back, or a rollback that paused, is an error with the reason.
pub async fn wait(c: &Client, started: &pb::Service, rollback: bool) -> anyhow::Result<()> {
    let name = started.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
    let Some(first) = &started.update_status else {
        println!("{name}: nothing to roll out (the tasks' spec did not change)");
        return Ok(());
    };
    let (to, since) = (first.to_version, first.started_at_ms);
    let tty = std::io::stdout().is_terminal();
    let mut shown: Vec<String> = Vec::new();
    let mut printed = 0usize;
    // The first read goes through the leader (read-your-writes): the manager answering may
    // not have applied the write the command just made yet. Later polls read locally.
    let mut consistent = true;
    loop {
        let s = c.get_service(&name, consistent).await?;
        consistent = false;
        let Some(u) = s.update_status.clone() else {
            anyhow::bail!("service {name} shows no rollout any more (was it deleted and created again?)");
        };
        // Ours: the rollout started, or the automatic rollback of the update started.
        let ours = (u.started_at_ms == since && u.to_version == to)
            || (!rollback && is_rollback(&u) && u.from_version == to && u.started_at_ms >= since);
        if !ours {
            anyhow::bail!(
                "service {name}: another rollout (to version {}) replaced this one; see `warren service inspect {name}`",
                u.to_version
            );
        }
        let mut lines = vec![format!(
            "{name}: {} to version {} ({})",
            if is_rollback(&u) { "rollback" } else { "update" },
            u.to_version,
            state_name(&u)
        )];
        lines.extend(slot_lines(&s, &u));
        if lines != shown {
            let mut o = std::io::stdout().lock();
            if tty {
                if printed > 0 {
                    write!(o, "\x1b[{printed}A")?;
                }
                for l in &lines {
                    writeln!(o, "\x1b[2K{l}")?;
                }
                printed = lines.len();
            } else {
                for l in lines.iter().filter(|l| !shown.contains(l)) {
                    writeln!(o, "{l}")?;
                }
            }
            o.flush()?;
            shown = lines;
        }
        if !in_progress(&u) {
            let state = state_of(&u);
            let ok = if rollback {
                state == pb::UpdateState::RollbackCompleted
            } else {
                state == pb::UpdateState::Completed
            };
            if ok {
                println!("{}", u.message);
                return Ok(());
            }
            anyhow::bail!("{} ({name} now runs version {})", u.message, s.spec_version);
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// `--health-*`: the service's health check.
#[derive(Args, Debug, Default)]
pub struct HealthArgs {
    /// Command run inside the container to check it (`/bin/sh -c CMD`; exit 0 is healthy).
    /// A task is `starting` until a check passes; after --health-retries failures in a row it
    /// is failed and restarted per its restart policy.
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Between checks once healthy (until then every second at most) [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_interval: Option<Duration>,
    /// A check running longer fails [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Failures in a row that make a task unhealthy [default: 3].
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// Failures in this long after the start do not count [default: 0s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_start_period: Option<Duration>,
    /// No health check: neither the service's nor the image's HEALTHCHECK.
    #[arg(long)]
    pub no_healthcheck: bool,
}

fn default_health() -> pb::HealthCheck {
    pb::HealthCheck {
        cmd: Vec::new(),
        interval_ms: 30_000,
        timeout_ms: 30_000,
        retries: 3,
        start_period_ms: 0,
    }
}

impl HealthArgs {
    /// Sets the given flags on `spec`.
    pub fn apply(&self, spec: &mut pb::ServiceSpec) -> anyhow::Result<()> {
        if self.no_healthcheck {
            if self.health_cmd.is_some() {
                anyhow::bail!("--no-healthcheck and --health-cmd together: pass one of them");
            }
            spec.healthcheck = None;
            spec.no_healthcheck = true;
            return Ok(());
        }
        if let Some(c) = &self.health_cmd {
            let h = spec.healthcheck.get_or_insert_with(default_health);
            h.cmd = vec!["/bin/sh".into(), "-c".into(), c.clone()];
            spec.no_healthcheck = false;
        }
        let tuning = self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some();
        if !tuning {
            return Ok(());
        }
        let Some(h) = spec.healthcheck.as_mut() else {
            anyhow::bail!("--health-interval, --health-timeout, --health-retries and --health-start-period need a --health-cmd (the service has none)");
        };
        if let Some(v) = self.health_interval {
            h.interval_ms = ms(v);
        }
        if let Some(v) = self.health_timeout {
            h.timeout_ms = ms(v);
        }
        if let Some(v) = self.health_retries {
            h.retries = v;
        }
        if let Some(v) = self.health_start_period {
            h.start_period_ms = ms(v);
        }
        Ok(())
    }
}

/// After `service create`: polls the service's tasks until every slot runs (exit 0), showing
/// progress, or until one of its tasks failed or was rejected (an error with the reason: the
/// service stays, and the managers go on as its restart policy says).
pub async fn wait_created(c: &Client, s: &pb::Service) -> anyhow::Result<()> {
    let name = s.spec.as_ref().map(|x| x.name.clone()).unwrap_or_default();
    let replicas = usize::try_from(s.spec.as_ref().map_or(0, |x| x.replicas)).unwrap_or(0);
    let tty = std::io::stderr().is_terminal();
    let mut shown = String::new();
    // As in `wait`: the first read sees the create, whichever manager answers.
    let mut consistent = true;
    loop {
        let tasks = c.list_tasks(&name, consistent).await?;
        consistent = false;
        let state = |t: &pb::Task| pb::TaskState::try_from(t.state).unwrap_or(pb::TaskState::Unspecified);
        if let Some(bad) = tasks
            .iter()
            .find(|t| matches!(state(t), pb::TaskState::Failed | pb::TaskState::Rejected))
        {
            if tty && !shown.is_empty() {
                eprintln!();
            }
            let why = if bad.error.is_empty() {
                &bad.message
            } else {
                &bad.error
            };
            anyhow::bail!(
                "service {name} was created, but task {name}.{} {}: {why}; see `warren service ps {name}` (the managers restart it as its restart policy says; fix it with `warren service update` or remove it)",
                bad.slot,
                state(bad).as_str_name().trim_start_matches("TASK_STATE_").to_ascii_lowercase(),
            );
        }
        let running = tasks
            .iter()
            .filter(|t| {
                state(t) == pb::TaskState::Running && t.desired_state == pb::TaskState::Running as i32
            })
            .count();
        let pending: Vec<&str> = tasks
            .iter()
            .filter(|t| state(t) == pb::TaskState::Pending && !t.message.is_empty())
            .map(|t| t.message.as_str())
            .take(1)
            .collect();
        let line = match pending.first() {
            Some(why) => format!("{name}: {running}/{replicas} running; pending: {why}"),
            None => format!("{name}: {running}/{replicas} running"),
        };
        if line != shown {
            if tty {
                eprint!("\r\x1b[2K{line}");
                std::io::stderr().flush()?;
            } else {
                eprintln!("{line}");
            }
            shown = line;
        }
        if running >= replicas {
            if tty {
                eprintln!();
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}
