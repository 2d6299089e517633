//! Placement constraints, as `docker service create --constraint` spells them:
//! `node.id==ID`, `node.id!=ID`, `node.role==worker`, `node.labels.KEY==VALUE`,
//! `node.labels.KEY!=VALUE`.

use super::model::Node;
use super::state::StateError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Id,
    Role,
    Label(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    pub field: Field,
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Constraint, StateError> {
        let bad = |why: &str| {
            StateError::invalid(
                "constraint",
                format!(
                    "{text:?} {why}; use node.id==ID, node.role==worker or node.labels.KEY==VALUE (or != instead of ==)"
                ),
            )
        };
        let (lhs, equal, value) = if let Some((l, r)) = text.split_once("==") {
            (l, true, r)
        } else if let Some((l, r)) = text.split_once("!=") {
            (l, false, r)
        } else {
            return Err(bad("has no == or !="));
        };
        let (lhs, value) = (lhs.trim(), value.trim());
        if value.is_empty() {
            return Err(bad("has no value"));
        }
        if value.contains(['=', '!'])
            || value
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || super::validate::is_bidi(c))
        {
            return Err(bad(&format!(
                "has a value {value:?} with '=', '!', whitespace or control characters"
            )));
        }
        let field = match lhs {
            "node.id" => Field::Id,
            "node.role" => Field::Role,
            _ => match lhs.strip_prefix("node.labels.") {
                Some(key)
                    if !key.is_empty()
                        && !key
                            .chars()
                            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '=' | '!')) =>
                {
                    Field::Label(key.to_string())
                }
                _ => return Err(bad(&format!("names an unknown attribute {lhs:?}"))),
            },
        };
        if field == Field::Role && !matches!(value, "worker" | "manager") {
            return Err(bad(&format!(
                "can never match: a node's role is worker or manager, not {value:?}"
            )));
        }
        Ok(Constraint {
            field,
            equal,
            value: value.to_string(),
        })
    }

    pub fn matches(&self, node: &Node) -> bool {
        let actual = match &self.field {
            Field::Id => Some(node.id.as_str()),
            Field::Role => Some(node.role.as_str()),
            Field::Label(k) => node.labels.get(k).map(String::as_str),
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

pub fn parse_all(texts: &[String]) -> Result<Vec<Constraint>, StateError> {
    texts.iter().map(|t| Constraint::parse(t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::*;
    use std::collections::BTreeMap;

    fn node(id: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            id: id.into(),
            role: Role::Worker,
            address: String::new(),
            status: NodeStatus::Ready,
            availability: Availability::Active,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            capacity: Resources::default(),
            last_heartbeat_ms: 0,
            created_at_ms: 0,
            version: 0,
            agent_version: String::new(),
        }
    }

    #[test]
    fn parse_and_match() {
        let eu = node("w1", &[("zone", "eu")]);
        let us = node("w2", &[("zone", "us")]);
        let none = node("w3", &[]);
        let cases = [
            ("node.labels.zone==eu", [true, false, false]),
            ("node.labels.zone != eu", [false, true, true]),
            ("node.id==w2", [false, true, false]),
            ("node.id!=w2", [true, false, true]),
            ("node.role==worker", [true, true, true]),
            ("node.role==manager", [false, false, false]),
        ];
        for (text, want) in cases {
            let c = Constraint::parse(text).unwrap();
            let got = [c.matches(&eu), c.matches(&us), c.matches(&none)];
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn bad_constraints_name_the_problem() {
        for (text, needle) in [
            ("zone=eu", "no == or !="),
            ("node.labels.zone==", "no value"),
            ("node.labels.==x", "unknown attribute"),
            ("node.hostname==x", "unknown attribute"),
        ] {
            let err = Constraint::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains("node.labels.KEY==VALUE"), "{err}");
        }
    }
}
