//! Registry credentials from a Docker-style `config.json` (`--registry-auth-file`): the
//! `auths` map, by registry host, with `auth` (base64 of `user:password`) or
//! `username`/`password`. Bearer tokens are then obtained by the registry client.

use base64::Engine;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Registry host (as `resolve_registry` names it) → (user, password).
    by_host: BTreeMap<String, (String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read registry auth file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("registry auth file {path} is not a Docker config.json: {reason}")]
    Format { path: String, reason: String },
}

/// Docker Hub goes by several names; all mean the one the registry client talks to.
fn canonical_host(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "index.docker.io".into(),
        h => h.to_string(),
    }
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| AuthFileError::Format {
            path: path.display().to_string(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut by_host = BTreeMap::new();
        let Some(auths) = v.get("auths") else {
            return Ok(Credentials::default());
        };
        let auths = auths.as_object().ok_or("\"auths\" is not an object")?;
        for (key, entry) in auths {
            let user_pass = if let Some(a) = entry.get("auth").and_then(|a| a.as_str()) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .map_err(|_| format!("the \"auth\" of {key:?} is not base64"))?;
                let s =
                    String::from_utf8(raw).map_err(|_| format!("the \"auth\" of {key:?} is not UTF-8"))?;
                let (u, p) = s
                    .split_once(':')
                    .ok_or_else(|| format!("the \"auth\" of {key:?} is not base64 of user:password"))?;
                (u.to_string(), p.to_string())
            } else {
                let field = |f: &str| entry.get(f).and_then(|x| x.as_str()).unwrap_or("").to_string();
                (field("username"), field("password"))
            };
            if user_pass.0.is_empty() {
                continue;
            }
            by_host.insert(canonical_host(key), user_pass);
        }
        Ok(Credentials { by_host })
    }

    /// (user, password) for `registry_host`, if the file names it.
    pub fn for_host(&self, registry_host: &str) -> Option<&(String, String)> {
        self.by_host.get(&canonical_host(registry_host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_config() {
        let c = Credentials::parse(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
                "127.0.0.1:5000": {"username": "a", "password": "b:c"},
                "empty.example": {}
            }, "credsStore": "desktop"}"#,
        )
        .unwrap();
        assert_eq!(c.for_host("docker.io"), Some(&("user".into(), "pass".into())));
        assert_eq!(
            c.for_host("index.docker.io"),
            Some(&("user".into(), "pass".into()))
        );
        assert_eq!(c.for_host("127.0.0.1:5000"), Some(&("a".into(), "b:c".into())));
        assert_eq!(c.for_host("empty.example"), None);
        assert_eq!(c.for_host("other:5000"), None);
    }

    #[test]
    fn refuses_garbage() {
        assert!(Credentials::parse("not json").is_err());
        assert!(Credentials::parse(r#"{"auths": []}"#).is_err());
        assert!(Credentials::parse(r#"{"auths": {"h": {"auth": "%%%"}}}"#)
            .unwrap_err()
            .contains("base64"));
        assert_eq!(Credentials::parse("{}").unwrap(), Credentials::default());
    }
}
