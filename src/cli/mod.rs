//! The `warren` command line: daemons (`cluster init`) and the operator commands that drive
//! them over gRPC. `main.rs` only calls `run`.

mod output;
mod rollout;

use crate::client::{Client, ClientError};
use crate::manager::{self, JoinOpts, ManagerOpts, Mode, StartOpts};
use crate::proto::v1 as pb;
use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;

#[derive(Parser, Debug)]
#[command(
    name = "warren",
    version,
    about = "A container orchestrator for small and edge clusters"
)]
pub struct Cli {
    /// Manager API address(es) to talk to, comma separated; any manager will do.
    #[arg(
        long,
        global = true,
        env = "WARREN_MANAGER",
        default_value = "127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub manager: Vec<String>,
    /// Output format of list, inspect and info commands.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Directory with the operator credential (admin.crt, admin.key, ca.crt): the one
    /// `cluster init` wrote to DATA_DIR/admin, or one from `warren cluster admin-cert`.
    /// Default: ~/.warren.
    #[arg(long, global = true, env = "WARREN_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
    /// Log format of the daemons (on stderr): text, or one JSON object per line.
    #[arg(long, global = true, value_enum, env = "WARREN_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create, inspect and run the cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Manage services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Inspect nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Join, restart and remove managers.
    #[command(subcommand)]
    Manager(ManagerCmd),
    /// Run a worker.
    #[command(subcommand)]
    Worker(WorkerCmd),
    /// This build, and each manager's and worker's as the cluster last heard it.
    Version,
    /// A shell completion script: `warren completion bash > /etc/bash_completion.d/warren`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Internal: run by containerd's shim for each container, stdout and stderr on fds 3 and
    /// 4; writes them with times to FILE.
    #[command(hide = true)]
    LogWriter { file: std::path::PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum WorkerCmd {
    /// Join the cluster with a worker token (first time) and run assigned tasks:
    /// `warren worker start --token T --manager ADDR[,ADDR...] --node-id ID --data-dir DIR`
    Start(crate::worker::WorkerOpts),
}

#[derive(Subcommand, Debug)]
pub enum ManagerCmd {
    /// Start a new manager and join it to an existing cluster with a manager token.
    Join(JoinOpts),
    /// Restart a manager from its data dir (identity and addresses come from there).
    Start(StartOpts),
    /// Take the manager at --manager out of the cluster.
    Leave {
        /// Even if the remaining managers would not make a quorum.
        #[arg(long)]
        force: bool,
    },
    /// Take manager ID out of the cluster (from any manager).
    #[command(alias = "rm")]
    Remove {
        id: u64,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenRole {
    Worker,
    Manager,
}

/// Flags of `warren cluster init`.
#[derive(Args, Clone, Debug)]
pub struct InitOpts {
    #[command(flatten)]
    pub manager: ManagerOpts,
    /// Start the new cluster from this backup (`warren cluster backup`): its services, tasks,
    /// nodes, join tokens and CA. Needs a new --data-dir. The managers of the old cluster
    /// are not members; join new ones with tokens.
    #[arg(long)]
    pub restore: Option<std::path::PathBuf>,
    /// With --restore: how long workers have to re-attach (restart them with --manager set
    /// to the new manager) before their tasks are rescheduled; 10s to 24h.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, requires = "restore")]
    pub rejoin_grace: std::time::Duration,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Start the first manager of a new cluster (or resume it from its data dir); with
    /// --restore, a new cluster from a backup.
    Init(InitOpts),
    /// Write a consistent copy of the cluster state to FILE (mode 0600). It holds the CA's
    /// private key: keep it as secret as the managers' data dirs.
    Backup {
        /// The file to write.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Issue a join token and print the command that joins with it.
    JoinToken {
        #[arg(value_enum)]
        role: TokenRole,
        /// Lifetime, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Invalidate every earlier token of this role.
        #[arg(long)]
        rotate: bool,
        /// Print only the token.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show the cluster id, the leader and the managers.
    Info {
        /// Linearizable read through the leader.
        #[arg(long)]
        consistent: bool,
    },
    /// Issue an operator credential for another operator: the key is made here, only its
    /// signing request goes to the cluster. Writes admin.crt, admin.key and ca.crt (0600).
    AdminCert {
        /// Directory to write to (created 0700); use it with --tls-dir or WARREN_TLS_DIR.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Who it is for (named in the certificate and in the managers' logs).
        #[arg(long, default_value = "admin")]
        name: String,
        /// Lifetime (at most 365d).
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Show the cluster CA and any rotation under way; `--rotate` replaces the CA.
    Ca {
        /// Make a new CA. Every manager and worker renews its certificate at once (nothing
        /// restarts) and the old CA stops being trusted when all have. The operator credential
        /// in use is replaced by one of the new CA; other operators need new ones from
        /// `warren cluster admin-cert` before the rotation completes; join tokens must be
        /// issued again.
        #[arg(long)]
        rotate: bool,
        /// With --rotate: return once the rotation has started.
        #[arg(long, requires = "rotate")]
        detach: bool,
        /// With --rotate: how long to wait for every node (the rotation goes on after it).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum ServiceCmd {
    /// Create a service: `warren service create web --image nginx --replicas 3 -- CMD ARGS...`
    Create(CreateArgs),
    /// List services.
    #[command(alias = "ls")]
    List {
        /// Linearizable read (read-index through the leader) instead of this manager's state.
        #[arg(long)]
        consistent: bool,
    },
    /// Show one service as JSON.
    Inspect {
        service: String,
        #[arg(long)]
        consistent: bool,
    },
    /// Change the replica count: `scale NAME --replicas N` or `scale NAME=N`.
    Scale {
        service: String,
        #[arg(long, allow_negative_numbers = true)]
        replicas: Option<i64>,
    },
    /// Change a service: `update web --image nginx:1.27`. A change of what the tasks run rolls
    /// out slot by slot (see the --update-* flags); waits for the rollout unless --detach and
    /// exits non-zero if it paused or was rolled back.
    Update(Box<rollout::UpdateArgs>),
    /// Roll back to the version before the latest update, or `--to-version V` (see the
    /// versions with `service inspect`); waits unless --detach.
    Rollback {
        service: String,
        #[arg(long, default_value_t = 0)]
        to_version: u64,
        #[command(flatten)]
        wait: rollout::WaitArgs,
    },
    /// Delete a service.
    #[command(alias = "rm")]
    Delete { service: String },
    /// Show what a service's tasks print: `logs web --tail 100 --follow`.
    Logs {
        service: String,
        /// Keep printing new output until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Last lines per task: a number or `all` (at most 10,000).
        #[arg(long, default_value = "all", value_parser = parse_tail)]
        tail: i64,
        /// Only this task: its id, or at least 6 characters of what `service ps` shows, or of its id.
        #[arg(long = "task")]
        task_id: Option<String>,
        /// Start each line with the time it was written (RFC 3339, UTC, nanoseconds).
        #[arg(long, short = 't')]
        timestamps: bool,
    },
    /// List a service's tasks: node, desired and actual state, since when, and why.
    Ps {
        service: String,
        #[arg(long)]
        consistent: bool,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long)]
    pub image: String,
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub replicas: i64,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Placement constraint (repeatable): node.labels.KEY==VALUE, node.id!=ID, node.role==worker.
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    #[command(flatten)]
    pub resources: ResourceArgs,
    /// Restart a finished task: none, on-failure or any.
    #[arg(long, value_enum, default_value_t = RestartCondition::Any)]
    pub restart_condition: RestartCondition,
    /// Give up after this many restarts of a replica (0 = never give up).
    #[arg(long, default_value_t = 0)]
    pub restart_max_attempts: u32,
    /// Wait between a task ending and its restart, e.g. 5s.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub restart_delay: std::time::Duration,
    /// Time a task gets to stop before it is killed, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub stop_timeout: std::time::Duration,
    #[command(flatten)]
    pub rollout: rollout::RolloutArgs,
    #[command(flatten)]
    pub health: rollout::HealthArgs,
    #[command(flatten)]
    pub wait: rollout::WaitArgs,
    /// Command and arguments run in the container.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Per-task CPU and memory, reserved and limited (`service create` and `service update`).
#[derive(Args, Debug, Default)]
pub struct ResourceArgs {
    /// CPUs reserved per task (e.g. 0.5); the scheduler only places where they are free.
    #[arg(long, value_parser = parse_cpus)]
    pub reserve_cpu: Option<u64>,
    /// Memory reserved per task (e.g. 256MiB).
    #[arg(long, value_parser = crate::worker::parse_memory)]
    pub reserve_memory: Option<u64>,
    /// CPU limit per task.
    #[arg(long, value_parser = parse_cpus)]
    pub limit_cpu: Option<u64>,
    /// Memory limit per task.
    #[arg(long, value_parser = crate::worker::parse_memory)]
    pub limit_memory: Option<u64>,
}

impl ResourceArgs {
    /// Sets the given flags on `spec` (the others stay as they are).
    pub fn apply(&self, spec: &mut pb::ServiceSpec) {
        let res = spec.resources.get_or_insert_with(Default::default);
        let reservations = res.reservations.get_or_insert_with(Default::default);
        if let Some(v) = self.reserve_cpu {
            reservations.cpu_millis = v;
        }
        if let Some(v) = self.reserve_memory {
            reservations.memory_bytes = v;
        }
        let limits = res.limits.get_or_insert_with(Default::default);
        if let Some(v) = self.limit_cpu {
            limits.cpu_millis = v;
        }
        if let Some(v) = self.limit_memory {
            limits.memory_bytes = v;
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

fn restart_condition(c: RestartCondition) -> pb::RestartCondition {
    match c {
        RestartCondition::None => pb::RestartCondition::None,
        RestartCondition::OnFailure => pb::RestartCondition::OnFailure,
        RestartCondition::Any => pb::RestartCondition::Any,
    }
}

/// `--tail`: a line count or `all` (-1).
fn parse_tail(s: &str) -> Result<i64, String> {
    match s.trim() {
        "all" => Ok(-1),
        n => match n.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(n),
            _ => Err(format!(
                "{s:?} is not a line count; use a number from 0 up, or `all`"
            )),
        },
    }
}

/// CPUs as a decimal ("0.5") to thousandths.
fn parse_cpus(s: &str) -> Result<u64, String> {
    match s.trim().parse::<f64>() {
        Ok(c) if c.is_finite() && c >= 0.0 => Ok((c * 1000.0).round() as u64),
        _ => Err(format!("{s:?} is not a number of CPUs; use for example 0.5 or 2")),
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Availability {
    Active,
    Drain,
    Pause,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List nodes.
    #[command(alias = "ls")]
    List,
    /// Show one node as JSON.
    Inspect { id: String },
    /// Set a node's availability: drain moves its tasks away, pause takes no new ones.
    Update {
        id: String,
        #[arg(long, value_enum)]
        availability: Availability,
    },
    /// Remove a node that is down (or any node with --force; its tasks are rescheduled).
    #[command(alias = "rm")]
    Remove {
        id: String,
        #[arg(long)]
        force: bool,
    },
}

fn key_values(flag: &str, items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{flag} {kv:?} is not KEY=VALUE"))
        })
        .collect()
}

/// Parses `NAME=N` or `NAME` + `--replicas N` for `service scale`.
fn scale_target(service: &str, replicas: Option<i64>) -> anyhow::Result<(String, i64)> {
    match (service.split_once('='), replicas) {
        (Some(_), Some(_)) => {
            anyhow::bail!("give the count once: `scale NAME=N` or `scale NAME --replicas N`")
        }
        (Some((name, n)), None) => {
            let n = n
                .parse()
                .with_context(|| format!("{n:?} in {service:?} is not a number of replicas"))?;
            Ok((name.to_string(), n))
        }
        (None, Some(n)) => Ok((service.to_string(), n)),
        (None, None) => anyhow::bail!(
            "missing replica count: `warren service scale {service} --replicas N` or `{service}=N`"
        ),
    }
}

async fn shutdown_signal() {
    #[cfg(not(madsim))]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(madsim)]
    std::future::pending::<()>().await
}

/// Each manager's build (id, leader?, build; empty when unknown) and each node's.
async fn versions(c: &Client) -> anyhow::Result<output::ClusterVersions> {
    let info = c
        .call(|mut s| async move {
            s.cluster
                .get_cluster_info(pb::GetClusterInfoRequest::default())
                .await
        })
        .await?;
    let nodes = c.list_nodes().await?;
    Ok(output::ClusterVersions {
        managers: info
            .managers
            .iter()
            .map(|m| (m.node_id, m.node_id == info.leader_id, m.version.clone()))
            .collect(),
        workers: nodes.into_iter().map(|n| (n.id, n.agent_version)).collect(),
    })
}

/// `cluster backup`: fetched through the leader, checked, written 0600 and fsynced.
async fn backup(c: &Client, file: &std::path::Path, force: bool) -> anyhow::Result<()> {
    if !force && std::fs::symlink_metadata(file).is_ok() {
        anyhow::bail!(
            "{} exists; choose another --out or pass --force to replace it (nothing was changed)",
            file.display()
        );
    }
    let bytes = c.backup().await?;
    let b = manager::backup::decode(&bytes)
        .context("the managers sent a backup that does not check out; nothing was written")?;
    crate::raft::disk::write_private(file, &bytes)
        .with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "backup written to {} ({} bytes): {}",
        file.display(),
        bytes.len(),
        manager::backup::summary(&b)
    );
    eprintln!(
        "warning: {} holds the cluster CA's private key: anyone with it can act as any node or operator of this cluster. Keep it as secret as the managers' data dirs.",
        file.display()
    );
    Ok(())
}

/// Runs the parsed command; errors carry the message shown to the operator.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let tls_dir = cli.tls_dir.clone();
    let client = || -> anyhow::Result<Client> {
        let cred = crate::security::operator_credential(tls_dir.as_deref())?;
        Ok(Client::new(
            &cli.manager,
            crate::security::Transport::new(&cred)?,
        )?)
    };
    let out = cli.output;
    match cli.command {
        Cmd::Cluster(ClusterCmd::Init(opts)) => {
            let mode = match opts.restore {
                Some(backup) => Mode::Restore {
                    backup,
                    rejoin_grace_ms: i64::try_from(opts.rejoin_grace.as_millis()).unwrap_or(i64::MAX),
                },
                None => Mode::Init,
            };
            manager::start(opts.manager, mode, shutdown_signal()).await
        }
        Cmd::Cluster(ClusterCmd::Backup { out: file, force }) => backup(&client()?, &file, force).await,
        Cmd::Version => {
            // The cluster's part is best effort: the build is printed whatever happens.
            let cluster = match client() {
                Ok(c) => versions(&c).await,
                Err(e) => Err(e),
            };
            output::versions(
                out,
                &crate::build::describe(),
                cluster.as_ref().map_err(|e| format!("{e:#}")),
            )
        }
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "warren", &mut std::io::stdout());
            Ok(())
        }
        Cmd::LogWriter { .. } => anyhow::bail!("log-writer is run by containerd's shim, not from here"),
        Cmd::Cluster(ClusterCmd::JoinToken {
            role,
            ttl,
            rotate,
            quiet,
        }) => {
            let role = match role {
                TokenRole::Worker => pb::Role::Worker,
                TokenRole::Manager => pb::Role::Manager,
            };
            let t = client()?.join_token(role, ttl.as_secs().max(1), rotate).await?;
            if quiet {
                println!("{}", t.token);
            } else {
                output::join_token(out, &t)?;
            }
            Ok(())
        }
        Cmd::Manager(ManagerCmd::Join(j)) => {
            let mode = Mode::Join {
                token: j.token,
                leaders: j.leader,
            };
            manager::start(j.manager, mode, shutdown_signal()).await
        }
        Cmd::Manager(ManagerCmd::Start(s)) => {
            let opts = ManagerOpts {
                node_id: 0,
                api_addr: String::new(),
                bind_addr: String::new(),
                data_dir: s.data_dir,
                cert_ttl: crate::security::pki::DEFAULT_CERT_TTL,
                timing: s.timing,
            };
            let mode = if s.force_new_cluster {
                Mode::ForceNewCluster {
                    even_if_reachable: s.even_if_reachable,
                }
            } else {
                Mode::Resume
            };
            manager::start(opts, mode, shutdown_signal()).await
        }
        Cmd::Manager(ManagerCmd::Leave { force }) => {
            let c = client()?;
            let me = c
                .call(|mut s| async move {
                    s.cluster
                        .get_cluster_info(pb::GetClusterInfoRequest::default())
                        .await
                })
                .await?
                .answered_by;
            remove_manager(&c, me, force).await
        }
        Cmd::Manager(ManagerCmd::Remove { id, force }) => remove_manager(&client()?, id, force).await,
        Cmd::Cluster(ClusterCmd::Ca {
            rotate,
            detach,
            timeout,
        }) => {
            if rotate {
                rotate_ca(&cli.manager, tls_dir.as_deref(), detach, timeout).await
            } else {
                let status = client()?.ca_status().await?;
                print_ca_status(&status);
                Ok(())
            }
        }
        Cmd::Cluster(ClusterCmd::AdminCert { out: dir, name, ttl }) => {
            use crate::security::{pki::Key, store::Credential};
            if Credential::exists(&dir, "admin") {
                anyhow::bail!(
                    "{} already holds an operator credential; choose another --out (nothing was changed)",
                    dir.display()
                );
            }
            let key = Key::generate()?;
            let req = pb::IssueAdminCertificateRequest {
                name: name.clone(),
                csr_der: key.request()?,
                ttl_seconds: ttl.as_secs().max(1),
            };
            let issued = client()?
                .call(|mut s| {
                    let req = req.clone();
                    async move { s.cluster.issue_admin_certificate(req).await }
                })
                .await?;
            let cred = Credential {
                cert_der: issued.cert_der,
                chain_der: issued.chain_der,
                key_pkcs8: key.pkcs8_der().to_vec(),
                ca_der: issued.ca_der,
            };
            cred.save(&dir, "admin")?;
            let who = cred.identity()?;
            println!(
                "operator credential for {name} written to {} (valid until {}); use it with --tls-dir {} or WARREN_TLS_DIR",
                dir.display(),
                humantime::format_rfc3339_seconds(who.not_after),
                dir.display()
            );
            Ok(())
        }
        Cmd::Cluster(ClusterCmd::Info { consistent }) => {
            let info = client()?
                .call(|mut s| async move {
                    s.cluster
                        .get_cluster_info(pb::GetClusterInfoRequest { consistent })
                        .await
                })
                .await?;
            output::cluster_info(out, &info)
        }
        Cmd::Service(cmd) => service(client()?, out, cmd).await,
        Cmd::Worker(WorkerCmd::Start(mut opts)) => {
            opts.managers = cli.manager.clone();
            let capacity = host_capacity(&opts);
            let runtime = crate::worker::open_runtime(&opts).await?;
            crate::worker::start(opts, capacity, runtime, shutdown_signal()).await
        }
        Cmd::Node(cmd) => node(client()?, out, cmd).await,
    }
}

async fn remove_manager(c: &Client, node_id: u64, force: bool) -> anyhow::Result<()> {
    let r = c
        .call(|mut s| async move {
            s.cluster
                .remove_manager(pb::RemoveManagerRequest { node_id, force })
                .await
        })
        .await?;
    println!("manager {node_id} removed; {} managers remain", r.managers.len());
    Ok(())
}

async fn service(c: Client, out: Output, cmd: ServiceCmd) -> anyhow::Result<()> {
    match cmd {
        ServiceCmd::Create(a) => {
            let spec = pb::ServiceSpec {
                name: a.name,
                image: a.image,
                replicas: a.replicas,
                env: key_values("--env", &a.env)?,
                labels: key_values("--label", &a.labels)?,
                command: a.command,
                constraints: a.constraints,
                restart_policy: Some(pb::RestartPolicy {
                    condition: restart_condition(a.restart_condition) as i32,
                    max_attempts: a.restart_max_attempts,
                    delay_ms: a.restart_delay.as_millis() as u64,
                }),
                stop_timeout_ms: a.stop_timeout.as_millis() as u64,
                ..Default::default()
            };
            let mut spec = spec;
            a.resources.apply(&mut spec);
            a.rollout.apply(&mut spec);
            a.health.apply(&mut spec)?;
            let s = c.create_service(spec).await?;
            output::created(out, &s)?;
            if a.wait.detach || out == Output::Json {
                return Ok(());
            }
            rollout::wait_created(&c, &s).await
        }
        ServiceCmd::List { consistent } => {
            let services = c.list_services(consistent).await?;
            output::services(out, &services)
        }
        ServiceCmd::Inspect { service, consistent } => {
            let s = c.get_service(&service, consistent).await?;
            output::json(&output::service_json(&s))
        }
        ServiceCmd::Update(a) => {
            let current = c.get_service(&a.service, true).await?;
            let mut spec = current.spec.clone().unwrap_or_default();
            a.apply(&mut spec)?;
            let s = c
                .update_service(&a.service, spec, current.version, a.force)
                .await?;
            let started = s.update_status.as_ref().is_some_and(|u| {
                s.spec_version != current.spec_version
                    || u.started_at_ms
                        > current
                            .update_status
                            .as_ref()
                            .map_or(i64::MIN, |c| c.started_at_ms)
            });
            if a.wait.detach || out == Output::Json {
                return output::created(out, &s);
            }
            if !started {
                println!(
                    "{}: the tasks' spec did not change; nothing to roll out",
                    a.service
                );
                return Ok(());
            }
            rollout::wait(&c, &s, false).await
        }
        ServiceCmd::Rollback {
            service,
            to_version,
            wait,
        } => {
            let s = c.rollback_service(&service, to_version).await?;
            if wait.detach || out == Output::Json {
                return output::created(out, &s);
            }
            rollout::wait(&c, &s, true).await
        }
        ServiceCmd::Scale { service, replicas } => {
            let (service, replicas) = scale_target(&service, replicas)?;
            let s = c.scale_service(&service, replicas).await?;
            output::created(out, &s)
        }
        ServiceCmd::Delete { service } => {
            let r = c.delete_service(&service).await?;
            println!("{}", r.id);
            Ok(())
        }
        ServiceCmd::Logs {
            service,
            follow,
            tail,
            task_id,
            timestamps,
        } => {
            let name = service.clone();
            let mut lines = c
                .service_logs(pb::ServiceLogsRequest {
                    service,
                    follow,
                    tail,
                    task_id: task_id.unwrap_or_default(),
                })
                .await?;
            use std::io::Write;
            let stdout = std::io::stdout();
            loop {
                match lines.message().await {
                    Ok(Some(l)) if !l.notice.is_empty() => eprintln!("warning: {}", l.notice),
                    Ok(Some(l)) => {
                        let mut o = stdout.lock();
                        let id = crate::core::limits::short_id(&l.task_id);
                        if timestamps {
                            match l.time_unix_nanos {
                                Some(ns) => write!(o, "{} ", output::rfc3339_nanos(ns))?,
                                // Written by an older worker without times.
                                None => write!(o, "{:30} ", "(time unknown)")?,
                            }
                        }
                        write!(o, "{name}.{}.{id}@{} | ", l.slot, l.node_id)?;
                        o.write_all(&l.line)?;
                        o.write_all(b"\n")?;
                        if follow {
                            o.flush()?;
                        }
                    }
                    Ok(None) if follow => {
                        anyhow::bail!(
                            "the log stream ended: a worker or manager went away; run the command again"
                        )
                    }
                    Ok(None) => return Ok(()),
                    Err(s) => anyhow::bail!("the log stream broke: {} (run the command again)", s.message()),
                }
            }
        }
        ServiceCmd::Ps { service, consistent } => {
            let tasks = c.list_tasks(&service, consistent).await?;
            output::tasks(out, &tasks)
        }
    }
}

/// The capacity a worker offers: flags, else the host's CPUs and memory.
fn host_capacity(opts: &crate::worker::WorkerOpts) -> crate::core::Resources {
    let cpus = opts
        .cpus
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) as f64);
    let memory = opts.memory.unwrap_or_else(host_memory_bytes);
    crate::core::Resources {
        cpu_millis: (cpus * 1000.0) as u64,
        memory_bytes: memory,
    }
}

fn host_memory_bytes() -> u64 {
    // "MemTotal:       24570396 kB"
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1 << 30, |kb| kb * 1024)
}

async fn node(c: Client, out: Output, cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::List => {
            let nodes = c.list_nodes().await?;
            output::nodes(out, &nodes)
        }
        NodeCmd::Inspect { id } => {
            let n = c
                .call(|mut s| {
                    let id = id.clone();
                    async move {
                        s.nodes
                            .get_node(pb::GetNodeRequest {
                                id,
                                consistent: false,
                            })
                            .await
                    }
                })
                .await?;
            output::json(&output::node_json(&n))
        }
        NodeCmd::Update { id, availability } => {
            let availability = match availability {
                Availability::Active => pb::NodeAvailability::Active,
                Availability::Drain => pb::NodeAvailability::Drain,
                Availability::Pause => pb::NodeAvailability::Pause,
            } as i32;
            let n = c
                .call_write(|mut s| {
                    let req = s.req(pb::UpdateNodeRequest {
                        id: id.clone(),
                        availability,
                        ..Default::default()
                    });
                    async move { s.nodes.update_node(req).await }
                })
                .await?;
            match out {
                Output::Json => output::json(&output::node_json(&n)),
                Output::Table => {
                    println!("{}", n.id);
                    Ok(())
                }
            }
        }
        NodeCmd::Remove { id, force } => {
            c.call_write(|mut s| {
                let req = s.req(pb::RemoveNodeRequest {
                    id: id.clone(),
                    force,
                });
                async move { s.nodes.remove_node(req).await }
            })
            .await?;
            println!("{id}");
            Ok(())
        }
    }
}

/// Exit code for an error: 2 for bad usage, 1 otherwise (gRPC errors included).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::NoManagers | ClientError::BadAddress { .. }) => 2,
        _ => 1,
    }
}

fn print_ca_status(s: &pb::CaStatus) {
    println!("CA fingerprint: {}", s.ca_fingerprint);
    if s.rotating {
        println!(
            "rotation from {} under way since {}: {} of {} nodes renewed; waiting for {}",
            s.old_ca_fingerprint,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(s.started_unix_ms.max(0) as u64)
            ),
            s.total as usize - s.pending.len(),
            s.total,
            s.pending.join(", ")
        );
    } else {
        println!("no rotation under way");
    }
}

/// `cluster ca --rotate`: starts the rotation, replaces the operator credential in use with
/// one of the new CA, then follows the rotation until every node has renewed.
async fn rotate_ca(
    managers: &[String],
    tls_dir: Option<&std::path::Path>,
    detach: bool,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use crate::security::Transport;
    let dir = crate::security::operator_dir(tls_dir);
    let cred = crate::security::operator_credential(tls_dir)?;
    let (mut new, status) =
        crate::security::rotate::start(&Client::new(managers, Transport::new(&cred)?)?, &dir).await?;
    println!(
        "CA rotation started: new CA {}; the operator credential in {} now comes from it (other operators need new ones from `warren cluster admin-cert` before the rotation completes; issue join tokens again)",
        status.ca_fingerprint,
        dir.display()
    );
    if detach {
        return Ok(());
    }
    let client = Client::new(managers, Transport::new(&new)?)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut shown = None;
    loop {
        let status = client.ca_status().await?;
        if !status.rotating {
            crate::security::rotate::finish(&client, &dir, &mut new).await?;
            println!(
                "CA rotation complete: every node renewed; the cluster trusts only CA {}",
                status.ca_fingerprint
            );
            return Ok(());
        }
        let renewed = status.total as usize - status.pending.len();
        if shown != Some(renewed) {
            println!(
                "{renewed} of {} nodes renewed; waiting for {}",
                status.total,
                status.pending.join(", ")
            );
            shown = Some(renewed);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the CA rotation is still waiting for {} after {}: a node that is down renews when it is back; remove one that is gone for good with `warren node rm` (workers) or `warren manager remove` (managers). The rotation goes on; `warren cluster ca` shows it",
                status.pending.join(", "),
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn scale_forms() {
        assert_eq!(scale_target("web=3", None).unwrap(), ("web".into(), 3));
        assert_eq!(scale_target("web", Some(0)).unwrap(), ("web".into(), 0));
        assert_eq!(scale_target("web", Some(-1)).unwrap(), ("web".into(), -1));
        assert!(scale_target("web=3", Some(2)).is_err());
        assert!(scale_target("web", None).is_err());
        assert!(scale_target("web=x", None)
            .unwrap_err()
            .to_string()
            .contains("not a number"));
    }

    #[test]
    fn parses_create_with_command() {
        let cli = Cli::try_parse_from([
            "warren",
            "service",
            "create",
            "web",
            "--image",
            "busybox",
            "--replicas",
            "-1",
            "-e",
            "A=1",
            "--",
            "sleep",
            "10",
        ])
        .unwrap();
        let Cmd::Service(ServiceCmd::Create(a)) = cli.command else {
            panic!()
        };
        assert_eq!(
            (a.replicas, a.command),
            (-1, vec!["sleep".to_string(), "10".into()])
        );
        assert_eq!(key_values("--env", &a.env).unwrap()["A"], "1");
        assert!(key_values("--env", &["NOEQ".into()]).is_err());
    }
}
