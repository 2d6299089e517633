//! The operator's side of a CA rotation (`warren cluster ca --rotate`, and the simulator's
//! operator): start it and replace the operator credential in use with the one of the new CA
//! that comes back in the same answer (the old one stops working when the rotation completes).

use super::pki::Key;
use super::store::Credential;
use crate::client::Client;
use crate::proto::v1 as pb;
use anyhow::Context;
use std::path::Path;

/// Starts a CA rotation through `client` and saves the caller's new operator credential in
/// `dir` (as `admin.*`); returns it and the rotation's status.
pub async fn start(client: &Client, dir: &Path) -> anyhow::Result<(Credential, pb::CaStatus)> {
    let key = Key::generate()?;
    let started = client
        .rotate_ca(key.request()?)
        .await
        .context("starting the CA rotation")?;
    let issued = started
        .admin
        .ok_or_else(|| anyhow::anyhow!("the manager sent no new operator credential"))?;
    let new = Credential {
        cert_der: issued.cert_der,
        chain_der: issued.chain_der,
        key_pkcs8: key.pkcs8_der().to_vec(),
        ca_der: issued.ca_der,
    };
    new.save(dir, "admin")
        .with_context(|| format!("saving the new operator credential in {}", dir.display()))?;
    Ok((new, started.status.unwrap_or_default()))
}

/// Once the rotation completed: trust only the CAs the cluster trusts now.
pub async fn finish(client: &Client, dir: &Path, cred: &mut Credential) -> anyhow::Result<()> {
    cred.ca_der = client.ca_certificates().await?.certs_der;
    cred.save(dir, "admin")?;
    Ok(())
}
