//! Input validation shared by every command. Each error names the field and what is allowed,
//! so the CLI can print it as is.

use super::limits::*;
use super::model::{ServiceSpec, UpdateConfig};
use super::state::StateError;
use std::collections::BTreeMap;

/// A service name is a DNS label: 1–63 characters of `a-z`, `0-9` and `-`, starting and
/// ending with a letter or digit (as Docker Swarm and Kubernetes accept).
pub fn service_name(name: &str) -> Result<(), StateError> {
    let bad = |reason: &str| {
        Err(StateError::invalid(
            "name",
            format!("{} is not a valid service name: {reason}; use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit", quote(name)),
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 63 {
        return Err(StateError::invalid(
            "name",
            format!("{} is not a valid service name: it is {} characters long; use 1-63 lowercase letters, digits or '-'", quote(name), name.chars().count()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return bad(&format!("{c:?} is not allowed"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("it starts or ends with '-'");
    }
    Ok(())
}

/// A worker node id: 1-63 characters of `a-z`, `0-9`, `-`, `_` and `.` (hostnames fit).
pub fn node_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StateError::invalid(
            "node id",
            format!(
                "{} is not a valid node id; use 1-63 lowercase letters, digits, '-', '_' or '.'",
                quote(id)
            ),
        ))
    }
}

pub fn replicas(replicas: i64) -> Result<(), StateError> {
    if !(0..=MAX_REPLICAS).contains(&replicas) {
        return Err(StateError::invalid(
            "replicas",
            format!("{replicas} is out of range; replicas must be between 0 and {MAX_REPLICAS}"),
        ));
    }
    Ok(())
}

/// An image reference as Docker spells it (`busybox`, `127.0.0.1:5000/app:1.2`,
/// `name@sha256:...`), parsed by a maintained OCI reference parser.
pub fn image(image: &str) -> Result<(), StateError> {
    if image.is_empty() {
        return Err(StateError::invalid(
            "image",
            "an image is required, for example --image busybox:latest",
        ));
    }
    if image.len() > MAX_IMAGE_BYTES {
        return Err(StateError::invalid(
            "image",
            format!(
                "{} is {} bytes long; at most {MAX_IMAGE_BYTES}",
                quote(image),
                image.len()
            ),
        ));
    }
    if let Some(c) = image.chars().find(|c| c.is_control() || is_bidi(*c)) {
        return Err(StateError::invalid(
            "image",
            format!(
                "{} contains the control character {}; an image reference has none",
                quote(image),
                c.escape_unicode()
            ),
        ));
    }
    if image.chars().any(char::is_whitespace) {
        return Err(StateError::invalid(
            "image",
            format!(
                "{} contains whitespace; an image reference has none",
                quote(image)
            ),
        ));
    }
    if plain_reference(image) {
        return Ok(());
    }
    oci_spec::distribution::Reference::try_from(image).map_err(|e| {
        StateError::invalid(
            "image",
            format!("{} is not an image reference ({e}); use NAME[:TAG][@DIGEST], for example busybox:1.36 or 127.0.0.1:5000/app:1.2", quote(image)),
        )
    })?;
    Ok(())
}

/// Whether `image` is `NAME[:TAG]` in a form the OCI reference grammar accepts, found without
/// its regular expression: NAME one path component (no registry, no `/`) of lowercase letters
/// and digits joined by single `.`, `_` or `-`, at most 247 bytes (with `library/` it stays
/// within 255); TAG 1 to 128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`. A subset of
/// what the parser accepts, so `image` answers the same with or without it; the parser's
/// backtracking search took about 2.5% of all CPU samples (three managers and the client) at
/// 16 clients creating services (issue #16): each create is checked by the leader's API and
/// again as each manager applies it.
fn plain_reference(image: &str) -> bool {
    const MAX_NAME_BYTES: usize = 255 - "library/".len();
    const MAX_TAG_BYTES: usize = 128;
    let (name, tag) = match image.split_once(':') {
        Some((n, t)) => (n, Some(t)),
        None => (image, None),
    };
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(alnum));
    let tag_ok = tag.is_none_or(|t| {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        t.len() <= MAX_TAG_BYTES
            && t.bytes().next().is_some_and(word)
            && t.bytes().all(|b| word(b) || b == b'.' || b == b'-')
    });
    name_ok && tag_ok
}

/// An image reference's parts, normalized as Docker does (`busybox` is
/// `docker.io/library/busybox:latest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageParts {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Splits a reference that [`image`] accepted. Workers use this instead of parsing again:
/// the OCI reference parser compiles a regular expression that keeps about 7 MiB of memory
/// for the life of the process. Its results equal the parser's (table test below).
pub fn image_parts(image: &str) -> ImageParts {
    let (name_tag, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d.to_string())),
        None => (image, None),
    };
    let (name, tag) = match name_tag.rfind(':') {
        Some(i) if !name_tag[i..].contains('/') => (&name_tag[..i], Some(name_tag[i + 1..].to_string())),
        _ => (name_tag, None),
    };
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if registry == "index.docker.io" {
        registry = "docker.io".into();
    }
    if registry == "docker.io" && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    let tag = if tag.is_none() && digest.is_none() {
        Some("latest".to_string())
    } else {
        tag
    };
    ImageParts {
        registry,
        repository,
        tag,
        digest,
    }
}

/// Task state reports a worker sends in a heartbeat: bounded count and field sizes.
pub fn task_reports(reports: &[super::state::TaskReport]) -> Result<(), StateError> {
    if reports.len() > MAX_REPORTS_PER_HEARTBEAT {
        return Err(StateError::invalid(
            "changes",
            format!(
                "{} task reports in one heartbeat; at most {MAX_REPORTS_PER_HEARTBEAT}",
                reports.len()
            ),
        ));
    }
    for r in reports {
        if r.task_id.is_empty() || r.task_id.len() > MAX_TASK_ID_BYTES {
            return Err(StateError::invalid(
                "task id",
                format!(
                    "{} is not a task id (1-{MAX_TASK_ID_BYTES} bytes)",
                    quote(&r.task_id)
                ),
            ));
        }
        if r.message.len() > MAX_REPORT_MESSAGE_BYTES {
            return Err(StateError::invalid(
                "message",
                format!(
                    "{} bytes for task {}; at most {MAX_REPORT_MESSAGE_BYTES}",
                    r.message.len(),
                    quote(&r.task_id)
                ),
            ));
        }
        if r.container_id.len() > MAX_CONTAINER_ID_BYTES
            || r.container_id.chars().any(|c| c.is_control() || is_bidi(c))
        {
            return Err(StateError::invalid(
                "container id",
                format!("{} is not a container id (at most {MAX_CONTAINER_ID_BYTES} bytes, no control characters)", quote(&r.container_id)),
            ));
        }
    }
    Ok(())
}

/// Unicode bidirectional controls, which make text display differently from what it is.
pub fn is_bidi(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn has_nul_or_newline(s: &str) -> bool {
    s.contains(['\0', '\n', '\r'])
}

pub fn env(spec: &ServiceSpec) -> Result<(), StateError> {
    if spec.env.len() > MAX_ENV_VARS {
        return Err(StateError::invalid(
            "env",
            format!("{} variables; at most {MAX_ENV_VARS}", spec.env.len()),
        ));
    }
    let mut total = 0;
    for (key, value) in &spec.env {
        if key.is_empty()
            || key.contains('=')
            || has_nul_or_newline(key)
            || key.chars().any(|c| c.is_control() || is_bidi(c))
        {
            return Err(StateError::invalid(
                "env",
                format!("{} is not a valid variable name (no '=', NUL, newline or control characters); use --env KEY=VALUE with a non-empty KEY", quote(key)),
            ));
        }
        if key.len() > MAX_ENV_KEY_BYTES {
            return Err(StateError::invalid(
                "env",
                format!(
                    "the name {} is {} bytes long; at most {MAX_ENV_KEY_BYTES}",
                    quote(key),
                    key.len()
                ),
            ));
        }
        if value.contains('\0') {
            return Err(StateError::invalid(
                "env",
                format!(
                    "the value of {} contains a NUL byte, which no process environment can hold",
                    quote(key)
                ),
            ));
        }
        if value.chars().any(is_bidi) {
            return Err(StateError::invalid(
                "env",
                format!(
                    "the value of {} contains a bidirectional control character, which makes it display as something else",
                    quote(key)
                ),
            ));
        }
        if value.len() > MAX_ENV_VALUE_BYTES {
            return Err(StateError::invalid(
                "env",
                format!("the value of {} is {} bytes long; at most {MAX_ENV_VALUE_BYTES} (pass large data as a file, not the environment)", quote(key), value.len()),
            ));
        }
        total += key.len() + value.len() + 1;
    }
    if total > MAX_ENV_TOTAL_BYTES {
        return Err(StateError::invalid(
            "env",
            format!("{total} bytes in all; at most {MAX_ENV_TOTAL_BYTES}"),
        ));
    }
    Ok(())
}

/// Labels of a service or a node: non-empty keys without NUL or control characters, bounded.
pub fn labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), StateError> {
    if labels.len() > MAX_LABELS {
        return Err(StateError::invalid(
            field,
            format!("{} labels; at most {MAX_LABELS}", labels.len()),
        ));
    }
    for (k, v) in labels {
        if k.is_empty()
            || k.chars()
                .any(|c| c.is_control() || is_bidi(c) || c.is_whitespace() || c == '=')
        {
            return Err(StateError::invalid(
                field,
                format!("{} is not a valid label key: use a non-empty key without '=', whitespace or control characters", quote(k)),
            ));
        }
        if k.len() > MAX_LABEL_KEY_BYTES || v.len() > MAX_LABEL_VALUE_BYTES {
            return Err(StateError::invalid(
                field,
                format!("label {} is too long; keys may have {MAX_LABEL_KEY_BYTES} bytes, values {MAX_LABEL_VALUE_BYTES}", quote(k)),
            ));
        }
        if v.chars().any(|c| c.is_control() || is_bidi(c)) {
            return Err(StateError::invalid(
                field,
                format!("the value of label {} contains control characters", quote(k)),
            ));
        }
    }
    Ok(())
}

fn command(spec: &ServiceSpec) -> Result<(), StateError> {
    let items = spec.command.len() + spec.args.len();
    let bytes: usize = spec.command.iter().chain(&spec.args).map(|a| a.len() + 1).sum();
    if items > MAX_COMMAND_ITEMS || bytes > MAX_COMMAND_BYTES {
        return Err(StateError::invalid(
            "command",
            format!("{items} arguments, {bytes} bytes; at most {MAX_COMMAND_ITEMS} arguments and {MAX_COMMAND_BYTES} bytes"),
        ));
    }
    if spec.command.iter().chain(&spec.args).any(|a| a.contains('\0')) {
        return Err(StateError::invalid("command", "an argument contains a NUL byte"));
    }
    Ok(())
}

fn constraints(spec: &ServiceSpec) -> Result<(), StateError> {
    if spec.constraints.len() > MAX_CONSTRAINTS {
        return Err(StateError::invalid(
            "constraint",
            format!(
                "{} constraints; at most {MAX_CONSTRAINTS}",
                spec.constraints.len()
            ),
        ));
    }
    if let Some(c) = spec.constraints.iter().find(|c| c.len() > MAX_CONSTRAINT_BYTES) {
        return Err(StateError::invalid(
            "constraint",
            format!("{} is longer than {MAX_CONSTRAINT_BYTES} bytes", quote(c)),
        ));
    }
    super::constraint::parse_all(&spec.constraints)?;
    Ok(())
}

pub fn service_spec(spec: &ServiceSpec) -> Result<(), StateError> {
    service_name(&spec.name)?;
    image(&spec.image)?;
    replicas(spec.replicas)?;
    env(spec)?;
    labels("labels", &spec.labels)?;
    command(spec)?;
    constraints(spec)?;
    restart_and_resources(spec)?;
    update_config("update", &spec.update_config)?;
    update_config("rollback", &spec.rollback_config)?;
    healthcheck(spec)?;
    let size = bincode::serialized_size(spec).unwrap_or(u64::MAX);
    if size > MAX_SPEC_BYTES as u64 {
        return Err(StateError::invalid(
            "spec",
            format!("the service spec is {size} bytes; at most {MAX_SPEC_BYTES} (env, labels, command and constraints together)"),
        ));
    }
    Ok(())
}

/// `--health-*` and `--no-healthcheck`.
fn healthcheck(spec: &ServiceSpec) -> Result<(), StateError> {
    let Some(h) = &spec.healthcheck else {
        return Ok(());
    };
    if spec.no_healthcheck {
        return Err(StateError::invalid(
            "healthcheck",
            "--no-healthcheck and a --health-cmd together; pass one of them",
        ));
    }
    if h.cmd.is_empty() || h.cmd[0].is_empty() {
        return Err(StateError::invalid(
            "health cmd",
            "empty; give the command to run in the container, e.g. --health-cmd 'wget -q -O- localhost:8080/healthz'",
        ));
    }
    let bytes: usize = h.cmd.iter().map(|a| a.len() + 1).sum();
    if h.cmd.len() > MAX_COMMAND_ITEMS || bytes > MAX_COMMAND_BYTES || h.cmd.iter().any(|a| a.contains('\0'))
    {
        return Err(StateError::invalid(
            "health cmd",
            format!("{} arguments, {bytes} bytes; at most {MAX_COMMAND_ITEMS} arguments and {MAX_COMMAND_BYTES} bytes, no NUL", h.cmd.len()),
        ));
    }
    for (name, v) in [("interval", h.interval_ms), ("timeout", h.timeout_ms)] {
        if !(MIN_HEALTH_PERIOD_MS..=MAX_HEALTH_PERIOD_MS).contains(&v) {
            return Err(StateError::invalid(
                &format!("health {name}"),
                format!("{v} ms; from {MIN_HEALTH_PERIOD_MS} ms to {MAX_HEALTH_PERIOD_MS} ms (--health-{name} 1s..1h)"),
            ));
        }
    }
    if h.start_period_ms > MAX_HEALTH_PERIOD_MS {
        return Err(StateError::invalid(
            "health start period",
            format!(
                "{} ms is above the maximum of {MAX_HEALTH_PERIOD_MS} ms (1h)",
                h.start_period_ms
            ),
        ));
    }
    if !(1..=MAX_HEALTH_RETRIES).contains(&h.retries) {
        return Err(StateError::invalid(
            "health retries",
            format!("{}; from 1 to {MAX_HEALTH_RETRIES}", h.retries),
        ));
    }
    Ok(())
}

/// Rollout settings (`--update-*`, `--rollback-*`).
pub fn update_config(what: &str, c: &UpdateConfig) -> Result<(), StateError> {
    let field = |name: &str| format!("{what} {name}");
    // Still the 0xA4 limit: an update asking for more would apply differently on an 0xA4
    // manager during a rolling upgrade (only the replica count moves entries to 0xA5).
    if i64::from(c.parallelism) > MAX_PARALLELISM {
        return Err(StateError::invalid(
            &field("parallelism"),
            format!(
                "{} is above the most allowed ({MAX_PARALLELISM}); 0 means all at once",
                c.parallelism
            ),
        ));
    }
    for (name, value, max, flag) in [
        ("delay", c.delay_ms, MAX_UPDATE_DELAY_MS, "delay"),
        ("monitor", c.monitor_ms, MAX_UPDATE_MONITOR_MS, "monitor"),
        ("timeout", c.timeout_ms, MAX_UPDATE_TIMEOUT_MS, "timeout"),
    ] {
        if value > max {
            return Err(StateError::invalid(
                &field(name),
                format!("{value} ms is above the maximum of {max} ms; lower --{what}-{flag}"),
            ));
        }
    }
    if c.timeout_ms < 1_000 {
        return Err(StateError::invalid(
            &field("timeout"),
            format!(
                "{} ms is too short for a task to be pulled and started; at least 1000 ms (--{what}-timeout 1s)",
                c.timeout_ms
            ),
        ));
    }
    if c.max_failure_permille > 1_000 {
        return Err(StateError::invalid(
            &field("max failure ratio"),
            format!(
                "{}/1000 is above 1; give a fraction from 0 to 1",
                c.max_failure_permille
            ),
        ));
    }
    Ok(())
}

pub fn restart_and_resources(spec: &ServiceSpec) -> Result<(), StateError> {
    let r = &spec.resources;
    for (what, reserve, limit) in [
        ("cpu", r.reservations.cpu_millis, r.limits.cpu_millis),
        ("memory", r.reservations.memory_bytes, r.limits.memory_bytes),
    ] {
        if limit != 0 && reserve > limit {
            return Err(StateError::invalid(
                "resources",
                format!(
                    "--reserve-{what} is above --limit-{what}; a task cannot reserve more than it may use"
                ),
            ));
        }
    }
    if spec.restart_policy.delay_ms > MAX_RESTART_DELAY_MS {
        return Err(StateError::invalid(
            "restart delay",
            format!(
                "{} ms is above the maximum of {MAX_RESTART_DELAY_MS} ms (24h)",
                spec.restart_policy.delay_ms
            ),
        ));
    }
    if spec.stop_timeout_ms > MAX_STOP_TIMEOUT_MS {
        return Err(StateError::invalid(
            "stop timeout",
            format!(
                "{} ms is above the maximum of {MAX_STOP_TIMEOUT_MS} ms (1h)",
                spec.stop_timeout_ms
            ),
        ));
    }
    Ok(())
}

/// A build description as a node reports it: printable ASCII, at most 128 bytes.
pub fn agent_version(v: &str) -> Result<(), StateError> {
    use super::limits::MAX_AGENT_VERSION_BYTES;
    if v.len() > MAX_AGENT_VERSION_BYTES {
        return Err(StateError::invalid(
            "version",
            format!("{} bytes; at most {MAX_AGENT_VERSION_BYTES}", v.len()),
        ));
    }
    if let Some(c) = v.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(StateError::invalid(
            "version",
            format!("contains the character {:?}; use printable ASCII", c),
        ));
    }
    Ok(())
}

/// A node's address as its worker reports it: empty, HOST:PORT or a host name.
pub fn node_address(address: &str) -> Result<(), StateError> {
    if address.is_empty()
        || address.parse::<std::net::SocketAddr>().is_ok()
        || address.parse::<std::net::IpAddr>().is_ok()
    {
        return Ok(());
    }
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "0"));
    let host_ok = address.len() <= MAX_NODE_ADDRESS_BYTES
        && !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
        });
    if host_ok && port.parse::<u16>().is_ok() {
        return Ok(());
    }
    Err(StateError::invalid(
        "address",
        format!(
            "{} is not an address; use HOST:PORT, an IP address or a host name",
            quote(address)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_references_are_a_subset_of_what_the_parser_accepts() {
        let parses = |s: &str| oci_spec::distribution::Reference::try_from(s).is_ok();
        // Every string of up to 5 characters over an alphabet of each kind of character the
        // grammar treats apart: none the fast path takes is refused by the parser.
        let alphabet = ['a', '0', 'Z', ':', '.', '_', '-', '/', '@'];
        let mut words = vec![String::new()];
        let mut taken = 0;
        for _ in 0..5 {
            words = words
                .iter()
                .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                .collect();
            for w in &words {
                if plain_reference(w) {
                    taken += 1;
                    assert!(parses(w), "{w:?} taken by the fast path, refused by the parser");
                }
            }
        }
        assert!(taken > 500, "the fast path took only {taken}");
        // (reference, taken by the fast path); each taken one parses.
        let name_max = "a".repeat(247);
        let name_over = "a".repeat(248);
        let tag_max = format!("app:{}", "t".repeat(128));
        let tag_over = format!("app:{}", "t".repeat(129));
        let cases: &[(&str, bool)] = &[
            ("busybox", true),
            ("busybox:latest", true),
            ("nginx:1.25-alpine", true),
            ("my-app_2.x:V1.0_rc", true),
            ("a:_", true),
            (&name_max, true),
            (&tag_max, true),
            // The parser's to judge.
            (&name_over, false),
            (&tag_over, false),
            ("busybox:", false),
            ("busybox:.x", false),
            ("busybox:-x", false),
            ("a__b", false),
            ("a--b", false),
            ("a..b", false),
            ("-a", false),
            ("a-", false),
            ("Busybox", false),
            ("library/busybox", false),
            ("127.0.0.1:5000/app:1.2", false),
            ("localhost:5000", true),
            ("busybox@sha256:0123", false),
            ("a:b:c", false),
            ("caf\u{e9}", false),
            ("busybox:t\u{e9}", false),
        ];
        for (r, fast) in cases {
            assert_eq!(plain_reference(r), *fast, "{r}");
            if *fast {
                assert!(parses(r), "{r}");
            }
            // Whichever way, `image` answers as the parser does.
            assert_eq!(image(r).is_ok(), parses(r), "{r}");
        }
    }

    #[test]
    fn service_names() {
        let long_ok = "a".repeat(63);
        let too_long = "a".repeat(64);
        let cases: &[(&str, bool)] = &[
            ("web", true),
            ("a", true),
            ("a-b", true),
            ("web-01", true),
            ("0web", true),
            (&long_ok, true),
            ("", false),
            ("UPPER", false),
            ("Web", false),
            ("a_b", false),
            ("a.b", false),
            ("-web", false),
            ("web-", false),
            ("we b", false),
            ("wéb", false),
            (&too_long, false),
        ];
        for (name, ok) in cases {
            assert_eq!(service_name(name).is_ok(), *ok, "name {name:?}");
        }
    }

    #[test]
    fn replica_bounds() {
        for (n, ok) in [
            (0, true),
            (1, true),
            (MAX_REPLICAS, true),
            (-1, false),
            (MAX_REPLICAS + 1, false),
            (i64::MIN, false),
        ] {
            assert_eq!(replicas(n).is_ok(), ok, "replicas {n}");
        }
    }

    #[test]
    fn images() {
        assert!(image("busybox:latest").is_ok());
        assert!(image("127.0.0.1:5000/busybox:test").is_ok());
        assert!(image("").is_err());
        assert!(image("busy box").is_err());
        for good in [
            "busybox",
            "busybox:1.36",
            "127.0.0.1:5000/app:1.2",
            "library/nginx",
            "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(image(good).is_ok(), "{good}: {:?}", image(good));
        }
        for bad in [
            ":",
            "!!!@@@###$$$:::////..",
            "a\u{7}b",
            "a\u{202e}b",
            "UPPER/Case",
            "a:b:c",
            &"a".repeat(600),
        ] {
            assert!(image(bad).is_err(), "{bad:?} must be refused");
        }
        let e = image("a\u{1}b").unwrap_err().to_string();
        assert!(
            e.contains("control character") && !e.contains("whitespace"),
            "{e}"
        );
    }

    #[test]
    fn spec_limits() {
        let base = ServiceSpec {
            name: "web".into(),
            image: "busybox".into(),
            replicas: 1,
            ..Default::default()
        };
        let with = |f: &dyn Fn(&mut ServiceSpec)| {
            let mut s = base.clone();
            f(&mut s);
            service_spec(&s)
        };
        assert!(service_spec(&base).is_ok());
        type Case<'a> = (&'a str, &'a dyn Fn(&mut ServiceSpec), &'a str);
        let cases: &[Case] = &[
            (
                "env key newline",
                &|s| {
                    s.env.insert("A\nB".into(), "v".into());
                },
                "env",
            ),
            (
                "env value NUL",
                &|s| {
                    s.env.insert("A".into(), "v\0".into());
                },
                "env",
            ),
            (
                "env value big",
                &|s| {
                    s.env.insert("A".into(), "v".repeat(MAX_ENV_VALUE_BYTES + 1));
                },
                "env",
            ),
            (
                "env total",
                &|s| {
                    for i in 0..5 {
                        s.env.insert(format!("K{i}"), "v".repeat(8000));
                    }
                },
                "env",
            ),
            (
                "label empty key",
                &|s| {
                    s.labels.insert("".into(), "v".into());
                },
                "labels",
            ),
            (
                "label NUL key",
                &|s| {
                    s.labels.insert("a\0".into(), "v".into());
                },
                "labels",
            ),
            (
                "restart delay",
                &|s| s.restart_policy.delay_ms = 1 << 63,
                "restart delay",
            ),
            ("stop timeout", &|s| s.stop_timeout_ms = u64::MAX, "stop timeout"),
            (
                "constraint ===",
                &|s| s.constraints = vec!["node.id===x".into()],
                "constraint",
            ),
            (
                "constraint ==!=",
                &|s| s.constraints = vec!["node.labels.a==!=b".into()],
                "constraint",
            ),
            (
                "constraint role",
                &|s| s.constraints = vec!["node.role==kingpin".into()],
                "constraint",
            ),
            (
                "many args",
                &|s| s.args = vec!["x".into(); MAX_COMMAND_ITEMS + 1],
                "command",
            ),
        ];
        for (what, f, field) in cases {
            match with(f) {
                Err(StateError::InvalidArgument { field: got, .. }) => assert_eq!(&got, field, "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn node_addresses() {
        for good in [
            "",
            "10.0.0.1:4000",
            "10.0.0.1",
            "[::1]:80",
            "edge-1.example:4000",
            "edge-1",
        ] {
            assert!(node_address(good).is_ok(), "{good}");
        }
        for bad in ["not an address", "a:b:c", "host:99999", "-x:1", "a\n"] {
            assert!(node_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_limits_message() {
        let mut spec = ServiceSpec::default();
        spec.env.insert("K".into(), "v".repeat(MAX_ENV_VALUE_BYTES + 1));
        let e = env(&spec).unwrap_err().to_string();
        assert!(e.contains("16384"), "{e}");
    }

    #[test]
    fn env_keys() {
        let mut spec = ServiceSpec::default();
        spec.env.insert("OK".into(), "x=y".into());
        assert!(env(&spec).is_ok());
        spec.env.insert("".into(), "v".into());
        assert!(env(&spec).is_err());
    }

    #[test]
    fn error_names_field_and_fix() {
        let err = service_name("a_b").unwrap_err().to_string();
        assert!(
            err.contains("name") && err.contains("'_'") && err.contains("lowercase"),
            "{err}"
        );
        let err = replicas(-1).unwrap_err().to_string();
        assert!(
            err.contains("replicas") && err.contains("between 0 and 100000"),
            "{err}"
        );
    }

    #[test]
    fn image_parts_equal_the_oci_parser() {
        let d = format!("sha256:{}", "a".repeat(64));
        let refs = [
            "busybox".to_string(),
            "busybox:1.36".into(),
            "library/busybox".into(),
            "user/app:v1".into(),
            "docker.io/busybox".into(),
            "index.docker.io/user/app".into(),
            "127.0.0.1:5000/busybox:test".into(),
            "localhost/app".into(),
            "localhost:5000/a/b/c:tag".into(),
            "registry.example.com/team/app".into(),
            format!("busybox@{d}"),
            format!("127.0.0.1:5000/app:1.2@{d}"),
            format!("ghcr.io/org/app@{d}"),
        ];
        for r in refs {
            image(&r).unwrap();
            let want = oci_spec::distribution::Reference::try_from(r.as_str()).unwrap();
            let got = image_parts(&r);
            assert_eq!(
                (
                    got.registry.as_str(),
                    got.repository.as_str(),
                    got.tag.as_deref(),
                    got.digest.as_deref()
                ),
                (want.registry(), want.repository(), want.tag(), want.digest()),
                "{r}"
            );
        }
    }
}
