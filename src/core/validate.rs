//! Input validation shared by every command. Each error names the field and what is allowed,
//! so the CLI can print it as is.

use super::model::{ServiceSpec, MAX_REPLICAS};
use super::state::StateError;

/// A service name is a DNS label: 1–63 characters of `a-z`, `0-9` and `-`, starting and
/// ending with a letter or digit (as Docker Swarm and Kubernetes accept).
pub fn service_name(name: &str) -> Result<(), StateError> {
    let bad = |reason: &str| {
        Err(StateError::invalid(
            "name",
            format!("{name:?} is not a valid service name: {reason}; use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"),
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 63 {
        return bad(&format!("it is {} characters long", name.len()));
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
            format!("{id:?} is not a valid node id; use 1-63 lowercase letters, digits, '-', '_' or '.'"),
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

pub fn image(image: &str) -> Result<(), StateError> {
    if image.is_empty() {
        return Err(StateError::invalid(
            "image",
            "an image is required, for example --image busybox:latest",
        ));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StateError::invalid(
            "image",
            format!("{image:?} contains whitespace; an image reference has none"),
        ));
    }
    Ok(())
}

pub fn env(spec: &ServiceSpec) -> Result<(), StateError> {
    for key in spec.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(StateError::invalid(
                "env",
                format!("{key:?} is not a valid variable name; use --env KEY=VALUE with a non-empty KEY"),
            ));
        }
    }
    Ok(())
}

pub fn service_spec(spec: &ServiceSpec) -> Result<(), StateError> {
    service_name(&spec.name)?;
    image(&spec.image)?;
    replicas(spec.replicas)?;
    env(spec)?;
    super::constraint::parse_all(&spec.constraints)?;
    restart_and_resources(spec)
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (10_000, true),
            (-1, false),
            (10_001, false),
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
            err.contains("replicas") && err.contains("between 0 and 10000"),
            "{err}"
        );
    }
}
