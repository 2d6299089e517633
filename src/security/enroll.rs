//! A node's first certificate, with a join token: fetch the CA certificate from any manager,
//! check it against the fingerprint in the token (before anything secret is sent), then send
//! the token and a signing request over a connection that trusts only that CA. The private
//! key is made here and never leaves this node.

use super::pki::Key;
use super::store::Credential;
use super::Transport;
use crate::client::Client;
use crate::core::token;
use crate::proto::v1 as pb;
use anyhow::{anyhow, Context};
use std::path::Path;

/// Gets this node's certificate as the `role` `node_id` and saves it as `DIR/node.*`.
pub async fn enroll<S: AsRef<str>>(
    dir: &Path,
    token_text: &str,
    managers: &[S],
    role: crate::core::Role,
    node_id: &str,
) -> anyhow::Result<Credential> {
    let parsed = token::parse(token_text).map_err(|e| anyhow!("{e}"))?;
    if parsed.role != role {
        // Before anything is sent: the token's role is in the clear.
        return Err(anyhow!(
            "{}",
            token::TokenError::WrongRole {
                token_role: parsed.role.as_str(),
                wanted: role.as_str(),
            }
        ));
    }
    let boot = Client::new(managers, Transport::bootstrap())?;
    let offered = boot
        .ca_certificates()
        .await
        .context("fetching the cluster's CA certificate")?;
    let ca_der = offered
        .certs_der
        .iter()
        .find(|c| token::ca_fingerprint(c) == parsed.ca_fingerprint)
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "the manager answering at {} presents a CA that does not match the join token (token: {}..., offered: {}): it is another cluster, or something in between is impersonating it; check --manager and the token",
                managers.iter().map(|m| m.as_ref()).collect::<Vec<_>>().join(","),
                &parsed.ca_fingerprint[..12],
                offered
                    .certs_der
                    .iter()
                    .map(|c| format!("{}...", &token::ca_fingerprint(c)[..12]))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let key = Key::generate()?;
    let csr_der = key.request()?;
    let trusted = Client::new(
        managers,
        Transport::trusting(&parsed.cluster_id, vec![ca_der], None)?,
    )?;
    let req = pb::IssueCertificateRequest {
        token: token_text.trim().to_string(),
        node_id: node_id.to_string(),
        csr_der,
    };
    let issued = trusted
        .call(|mut s| {
            let req = req.clone();
            async move { s.cluster.issue_certificate(req).await }
        })
        .await
        .map_err(|e| anyhow!("the cluster refused a certificate for {node_id:?}: {e}"))?;
    let cred = Credential {
        cert_der: issued.cert_der,
        chain_der: issued.chain_der,
        key_pkcs8: key.pkcs8_der().to_vec(),
        ca_der: issued.ca_der,
    };
    let who = cred.identity()?;
    if who.id != node_id || who.cluster_id != parsed.cluster_id || who.role.as_str() != role.as_str() {
        anyhow::bail!(
            "the cluster issued a certificate for {}/{} instead of {}/{node_id}",
            who.cluster_id,
            who.id,
            parsed.cluster_id
        );
    }
    cred.save(dir, "node")?;
    tracing::info!(node = node_id, dir = %dir.display(), "got this node's certificate");
    Ok(cred)
}
