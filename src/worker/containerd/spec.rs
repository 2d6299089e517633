//! The OCI runtime spec of a task's container, from the image config plus the service spec
//! (pure: table-tested below). Modelled on containerd's default Unix spec with Docker's
//! default capabilities; host networking (no network namespace; overlay networks come later).

use crate::core::ServiceSpec;
use serde_json::{json, Value};

/// What the spec needs from the image's config (the OCI `config` object).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// The image's HEALTHCHECK (Docker's image config), if it has one.
    pub healthcheck: Option<crate::core::HealthCheck>,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const CPU_PERIOD_US: u64 = 100_000;
/// Docker's default capability set.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The process's argv: a service command replaces the image's entrypoint and cmd (with
/// the service args after it); service args alone replace only the image's cmd.
pub fn argv(img: &ImageDefaults, spec: &ServiceSpec) -> Result<Vec<String>, String> {
    let argv: Vec<String> = if !spec.command.is_empty() {
        spec.command.iter().chain(&spec.args).cloned().collect()
    } else if !spec.args.is_empty() {
        img.entrypoint.iter().chain(&spec.args).cloned().collect()
    } else {
        img.entrypoint.iter().chain(&img.cmd).cloned().collect()
    };
    if argv.is_empty() {
        return Err("the image names no command and the service gives none: pass one after `--` in `warren service create`".into());
    }
    Ok(argv)
}

/// Image env with the service's env over it (same key: the service wins), PATH defaulted.
pub fn env(img: &ImageDefaults, spec: &ServiceSpec) -> Vec<String> {
    let mut out: Vec<String> = img
        .env
        .iter()
        .filter(|kv| {
            let k = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            !spec.env.contains_key(k)
        })
        .cloned()
        .collect();
    out.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    if !out.iter().any(|kv| kv.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_string());
    }
    out
}

/// The image's `USER` as numeric ids. Names would need the image's /etc/passwd, which the
/// worker does not read: refused with what to do instead.
pub fn user(img_user: &str) -> Result<(u32, u32), String> {
    let u = img_user.trim();
    if u.is_empty() || u == "root" || u == "root:root" {
        return Ok((0, 0));
    }
    let (uid, gid) = u.split_once(':').unwrap_or((u, ""));
    let uid: u32 = uid.parse().map_err(|_| {
        format!("the image runs as user {u:?}, a name; Warren needs a numeric USER uid[:gid] in the image (rebuild it with USER 1000:1000, for example)")
    })?;
    let gid: u32 = if gid.is_empty() {
        0
    } else {
        gid.parse()
            .map_err(|_| format!("the image's group in USER {u:?} is a name; use a numeric gid"))?
    };
    Ok((uid, gid))
}

/// The full runtime spec. `host_files` are host paths bind-mounted read-only at the same
/// place (for host networking: /etc/resolv.conf, /etc/hosts).
pub fn runtime_spec(
    task_id: &str,
    cgroup_parent: &str,
    img: &ImageDefaults,
    spec: &ServiceSpec,
    host_files: &[&str],
) -> Result<Value, String> {
    let args = argv(img, spec)?;
    let (uid, gid) = user(&img.user)?;
    let cwd = if img.working_dir.is_empty() {
        "/".to_string()
    } else {
        img.working_dir.clone()
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ];
    for f in host_files {
        mounts.push(json!({"destination": f, "type": "bind", "source": f, "options": ["rbind", "ro"]}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let limits = &spec.resources.limits;
    if limits.memory_bytes > 0 {
        resources["memory"] = json!({"limit": limits.memory_bytes});
    }
    if limits.cpu_millis > 0 {
        resources["cpu"] =
            json!({"quota": limits.cpu_millis * CPU_PERIOD_US / 1000, "period": CPU_PERIOD_US});
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env(img, spec),
            "cwd": cwd,
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": task_id,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": format!("{cgroup_parent}/{task_id}"),
            "resources": resources,
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/bin".into(), "MODE=image".into(), "KEEP=1".into()],
            working_dir: "/app".into(),
            user: String::new(),
            healthcheck: None,
        }
    }

    fn spec(command: &[&str], args: &[&str], env: &[(&str, &str)]) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            image: "busybox".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn argv_table() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (&[], &[], &["/entry", "serve", "--port=80"]),
            (&["httpd", "-f"], &[], &["httpd", "-f"]),
            (&["httpd"], &["-p", "8000"], &["httpd", "-p", "8000"]),
            (&[], &["debug"], &["/entry", "debug"]),
        ];
        for (command, args, want) in cases {
            assert_eq!(
                argv(&img(), &spec(command, args, &[])).unwrap(),
                s(want),
                "{command:?} {args:?}"
            );
        }
        let bare = ImageDefaults::default();
        assert!(argv(&bare, &spec(&[], &[], &[]))
            .unwrap_err()
            .contains("names no command"));
    }

    #[test]
    fn service_env_wins_and_path_defaults() {
        let e = env(&img(), &spec(&[], &[], &[("MODE", "service"), ("NEW", "x")]));
        assert_eq!(e, vec!["PATH=/bin", "KEEP=1", "MODE=service", "NEW=x"]);
        let e = env(&ImageDefaults::default(), &spec(&[], &[], &[("A", "1")]));
        assert_eq!(e, vec![DEFAULT_PATH.to_string(), "A=1".to_string()]);
    }

    #[test]
    fn user_table() {
        assert_eq!(user(""), Ok((0, 0)));
        assert_eq!(user("root"), Ok((0, 0)));
        assert_eq!(user("1000"), Ok((1000, 0)));
        assert_eq!(user("1000:2000"), Ok((1000, 2000)));
        assert!(user("nginx").unwrap_err().contains("numeric"));
        assert!(user("1000:www").unwrap_err().contains("gid"));
    }

    #[test]
    fn limits_hostname_and_host_network() {
        let mut sp = spec(&["sh"], &[], &[]);
        sp.resources.limits.memory_bytes = 64 << 20;
        sp.resources.limits.cpu_millis = 500;
        let v = runtime_spec("t1", "/warren", &img(), &sp, &["/etc/hosts"]).unwrap();
        assert_eq!(v["hostname"], "t1");
        assert_eq!(v["linux"]["cgroupsPath"], "/warren/t1");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64u64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["process"]["cwd"], "/app");
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(!ns.contains(&"network"), "host networking: no network namespace");
        assert!(v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/etc/hosts"));
        // No limits: no memory or cpu section at all (not a zero limit).
        let v = runtime_spec("t1", "/warren", &img(), &spec(&["sh"], &[], &[]), &[]).unwrap();
        assert!(v["linux"]["resources"].get("memory").is_none());
        assert!(v["linux"]["resources"].get("cpu").is_none());
    }
}
