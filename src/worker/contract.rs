//! The runtime contract every [`ContainerRuntime`] passes (in the spirit of openraft's
//! storage `Suite`): `cargo test` runs it against `SimRuntime`, tests/containerd.rs against
//! `ContainerdRuntime` on a real containerd, so the simulator's runtime cannot drift from
//! the real one. Each check panics with what broke.

use super::runtime::{ContainerRuntime, ContainerStatus, RuntimeError};
use crate::core::ServiceSpec;
use std::time::Duration;
use tokio::time::Instant;

/// What the suite needs from a runtime under test.
pub struct Fixture<'a> {
    pub runtime: &'a dyn ContainerRuntime,
    /// A pullable image, and one that does not exist.
    pub image: String,
    pub missing_image: String,
    /// Runs until stopped (and stops on SIGTERM).
    pub runs: ServiceSpec,
    /// Exits by itself with code 3, soon.
    pub exits_3: ServiceSpec,
    /// Names a command the image does not have.
    pub missing_command: ServiceSpec,
    /// Task ids are this prefix plus a suffix (unique per run on a shared runtime).
    pub prefix: String,
    /// How long a container may take to start or exit.
    pub patience: Duration,
}

async fn eventually(
    f: &Fixture<'_>,
    cid: &str,
    what: &str,
    ok: impl Fn(&Result<ContainerStatus, RuntimeError>) -> bool,
) -> Result<ContainerStatus, RuntimeError> {
    let end = Instant::now() + f.patience;
    loop {
        let s = f.runtime.status(cid).await;
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < end,
            "contract: {cid} never {what}; last status {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn listed(f: &Fixture<'_>, task: &str) -> Vec<(String, ContainerStatus)> {
    f.runtime
        .list()
        .await
        .expect("contract: list")
        .into_iter()
        .filter(|c| c.task_id == task)
        .map(|c| (c.container_id, c.status))
        .collect()
}

/// Runs every check; leaves nothing behind on success.
pub async fn run_all(f: &Fixture<'_>) {
    pulls(f).await;
    start_status_stop_remove(f).await;
    exit_codes(f).await;
    one_container_per_task(f).await;
    start_failures(f).await;
    unknown_containers(f).await;
    execs(f).await;
}

/// Health probes: a command run in a running container gives its exit code and output; one
/// that outlives its timeout is killed and gives none.
async fn execs(f: &Fixture<'_>) {
    let rt = f.runtime;
    let task = format!("{}-exec", f.prefix);
    let cid = rt.start(&task, &f.runs).await.expect("contract: start");
    let _ = eventually(f, &cid, "ran", |s| *s == Ok(ContainerStatus::Running)).await;
    let run = |cmd: &[&str], timeout_ms: u64| {
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        let cid = cid.clone();
        async move { rt.exec(&cid, &cmd, Duration::from_millis(timeout_ms)).await }
    };
    let ok = run(&["true"], 10_000).await.expect("contract: exec true");
    assert_eq!(ok.exit_code, Some(0), "contract: exec true: {ok:?}");
    let bad = run(&["false"], 10_000).await.expect("contract: exec false");
    assert_eq!(bad.exit_code, Some(1), "contract: exec false: {bad:?}");
    let said = run(&["echo", "probe-output"], 10_000)
        .await
        .expect("contract: exec echo");
    assert!(
        said.exit_code == Some(0) && said.output.contains("probe-output"),
        "contract: exec output: {said:?}"
    );
    let began = Instant::now();
    let hung = run(&["sleep", "60"], 1_000).await.expect("contract: exec sleep");
    assert_eq!(
        hung.exit_code, None,
        "contract: a probe past its timeout: {hung:?}"
    );
    assert!(
        began.elapsed() < f.patience + Duration::from_secs(1),
        "contract: the timeout held"
    );
    assert_eq!(
        rt.status(&cid).await,
        Ok(ContainerStatus::Running),
        "contract: probes leave the container running"
    );
    rt.remove(&cid).await.expect("contract: remove");
    assert!(
        rt.exec(&cid, &["true".to_string()], Duration::from_secs(1))
            .await
            .is_err(),
        "contract: exec in a removed container fails"
    );
}

async fn pulls(f: &Fixture<'_>) {
    let rt = f.runtime;
    assert!(
        matches!(rt.pull(&f.missing_image).await, Err(RuntimeError::Pull { .. })),
        "contract: pulling a missing image is a Pull error"
    );
    let (a, b) = futures::join!(rt.pull(&f.image), rt.pull(&f.image));
    assert!(
        a.is_ok() && b.is_ok(),
        "contract: concurrent pulls of one image: {a:?} {b:?}"
    );
    assert!(
        rt.pull(&f.image).await.is_ok(),
        "contract: pulling a present image again"
    );
}

async fn start_status_stop_remove(f: &Fixture<'_>) {
    let rt = f.runtime;
    let task = format!("{}-life", f.prefix);
    let cid = rt.start(&task, &f.runs).await.expect("contract: start");
    let _ = eventually(f, &cid, "ran", |s| *s == Ok(ContainerStatus::Running)).await;
    assert_eq!(
        listed(f, &task).await,
        vec![(cid.clone(), ContainerStatus::Running)],
        "contract: a running container is listed with its task"
    );
    rt.stop(&cid, Duration::from_secs(10))
        .await
        .expect("contract: stop");
    let s = rt.status(&cid).await;
    assert!(
        matches!(s, Ok(st) if st.is_exited()),
        "contract: stopped means exited at once: {s:?}"
    );
    let l = listed(f, &task).await;
    assert!(
        l.len() == 1 && l[0].1.is_exited(),
        "contract: a stopped container stays listed until removed: {l:?}"
    );
    rt.remove(&cid).await.expect("contract: remove");
    assert!(
        matches!(rt.status(&cid).await, Err(RuntimeError::NotFound(_))),
        "contract: a removed container is not found"
    );
    assert!(
        listed(f, &task).await.is_empty(),
        "contract: a removed container is not listed"
    );
}

async fn exit_codes(f: &Fixture<'_>) {
    let rt = f.runtime;
    let task = format!("{}-exit", f.prefix);
    let cid = rt.start(&task, &f.exits_3).await.expect("contract: start");
    let s = eventually(f, &cid, "exited", |s| matches!(s, Ok(st) if st.is_exited())).await;
    assert_eq!(
        s,
        Ok(ContainerStatus::Exited(3)),
        "contract: the exit code is the process's"
    );
    let r = rt.stop(&cid, Duration::from_secs(1)).await;
    assert_eq!(r, Ok(()), "contract: stopping an exited container is fine");
    assert_eq!(
        rt.status(&cid).await,
        Ok(ContainerStatus::Exited(3)),
        "contract: stopping an exited container keeps its exit code"
    );
    rt.remove(&cid).await.expect("contract: remove");
}

async fn one_container_per_task(f: &Fixture<'_>) {
    let rt = f.runtime;
    let task = format!("{}-again", f.prefix);
    let first = rt.start(&task, &f.exits_3).await.expect("contract: start");
    let _ = eventually(f, &first, "exited", |s| matches!(s, Ok(st) if st.is_exited())).await;
    let second = rt.start(&task, &f.runs).await.expect("contract: start again");
    let _ = eventually(f, &second, "ran", |s| *s == Ok(ContainerStatus::Running)).await;
    let l = listed(f, &task).await;
    assert_eq!(
        l.len(),
        1,
        "contract: starting a task again replaces its container: {l:?}"
    );
    // remove also kills a container that still runs.
    rt.remove(&second)
        .await
        .expect("contract: remove a running container");
    assert!(listed(f, &task).await.is_empty(), "contract: removed");
}

async fn start_failures(f: &Fixture<'_>) {
    let rt = f.runtime;
    let task = format!("{}-nocmd", f.prefix);
    let r = rt.start(&task, &f.missing_command).await;
    assert!(
        matches!(r, Err(RuntimeError::Start(_))),
        "contract: a missing command is a Start error: {r:?}"
    );
    assert!(
        listed(f, &task).await.is_empty(),
        "contract: a failed start leaves nothing"
    );
}

async fn unknown_containers(f: &Fixture<'_>) {
    let rt = f.runtime;
    let nope = format!("{}-never-started", f.prefix);
    assert!(
        matches!(rt.status(&nope).await, Err(RuntimeError::NotFound(_))),
        "contract: status of unknown"
    );
    assert!(
        matches!(
            rt.stop(&nope, Duration::from_secs(1)).await,
            Err(RuntimeError::NotFound(_))
        ),
        "contract: stop of unknown"
    );
    assert!(
        matches!(rt.remove(&nope).await, Err(RuntimeError::NotFound(_))),
        "contract: remove of unknown"
    );
}

/// The fixture for `SimRuntime` (its knobs stand in for real images and commands).
pub fn sim_specs() -> (ServiceSpec, ServiceSpec, ServiceSpec) {
    let base = ServiceSpec {
        name: "contract".into(),
        image: "busybox".into(),
        ..Default::default()
    };
    let mut exits_3 = base.clone();
    exits_3
        .env
        .insert("WARREN_SIM_EXIT_AFTER_MS".into(), "100".into());
    exits_3.env.insert("WARREN_SIM_EXIT_CODE".into(), "3".into());
    let mut missing = base.clone();
    missing.command = vec!["/nonexistent/binary".into()];
    (base, exits_3, missing)
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use crate::worker::sim_runtime::SimRuntime;

    #[tokio::test]
    async fn sim_runtime_keeps_the_contract() {
        let rt = SimRuntime::default();
        let (runs, exits_3, missing_command) = sim_specs();
        run_all(&Fixture {
            runtime: &rt,
            image: "busybox".into(),
            missing_image: "nope-pullfail".into(),
            runs,
            exits_3,
            missing_command,
            prefix: "sim".into(),
            patience: Duration::from_secs(5),
        })
        .await;
    }
}
