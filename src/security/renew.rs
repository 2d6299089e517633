//! Keeps a node's certificate fresh: at half its life (or at once, when a CA rotation put
//! another CA in charge) the node makes a new key, asks any manager to sign it
//! (`RenewCertificate`, authenticated by the current certificate), saves the new credential
//! and presents it from then on: the transport's generation changes, so cached channels
//! reconnect with it. Streams open at the time keep the certificate they were opened with
//! until they end (the managers refuse their messages once it expires or is revoked).

use super::pki::{self, Key};
use super::store::Credential;
use super::Transport;
use crate::client::Client;
use crate::core::renewal;
use crate::proto::v1 as pb;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// Looks at the certificate at least this often.
const CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// The CAs the cluster trusts, the signing one first, as this node last learnt them
/// (a manager from its replicated state, a worker from its heartbeats); empty: not known.
pub type TrustView = Vec<Vec<u8>>;

/// Renews `DIR/node.*` for ever (until the task is dropped), through `managers`: at half its
/// life, and at once when `trust` says another CA signs now (a CA rotation). Trusts what
/// `trust` says from then on, and keeps `ca.crt` in step with it.
pub async fn keep_renewed(
    dir: PathBuf,
    transport: Transport,
    managers: Vec<String>,
    mut trust: tokio::sync::watch::Receiver<TrustView>,
) {
    let mut backoff = crate::retry::Backoff::new(1_000, 60_000);
    // The certificate last confirmed to the cluster during a CA rotation.
    let mut confirmed: Option<String> = None;
    loop {
        let mut cred = match Credential::load(&dir, "node") {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read this node's certificate; renewal waits");
                tokio::time::sleep(CHECK_INTERVAL).await;
                continue;
            }
        };
        let Ok(who) = cred.identity() else { return };
        let view = trust.borrow_and_update().clone();
        if !view.is_empty() && view != cred.ca_der {
            info!(cas = view.len(), "the cluster trusts other CAs now");
            cred.ca_der = view.clone();
            if let Err(e) = cred.save(&dir, "node") {
                warn!(error = %e, "cannot save the trusted CAs");
            }
            transport.set_roots(view.clone());
        }
        let now = SystemTime::now();
        let due = who.renew_at();
        let next = renewal::next(renewal::Facts {
            due: now >= due,
            cas_trusted: view.len(),
            signed_by_current: view.first().map(|ca| pki::issued_by(&cred.cert_der, ca)),
            confirmed: confirmed.as_deref() == Some(who.serial_hex.as_str()),
        });
        // Confirmed over a new connection, which presents the certificate.
        if next == renewal::Next::Confirm {
            let r = match Client::new(&managers, transport.clone()) {
                Ok(c) => c.confirm_certificate().await.map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            };
            match r {
                Ok(()) => {
                    info!(serial = %who.serial_hex, "this node's certificate of the new CA is confirmed");
                    confirmed = Some(who.serial_hex.clone());
                }
                Err(e) => {
                    warn!(error = %e, "cannot confirm the renewed certificate; retrying");
                    backoff.wait(None).await;
                }
            }
            continue;
        }
        if next == renewal::Next::Wait {
            let wait = due.duration_since(now).unwrap_or_default().min(CHECK_INTERVAL);
            // Biased: an unbiased select! draws from tokio's own generator, which the
            // simulator does not seed (see docs/simulation.md).
            tokio::select! {
                biased;
                _ = tokio::time::sleep(wait) => {}
                r = trust.changed() => if r.is_err() {
                    // Nobody tells us of CA changes any more: renew on time only.
                    tokio::time::sleep(wait).await;
                },
            }
            continue;
        }
        if now < due {
            info!("a new CA signs for the cluster; renewing this node's certificate now");
        }
        // A new connection each time: it must present the current certificate (one opened
        // earlier still speaks for the one it was opened with).
        let client = match Client::new(&managers, transport.clone()) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot renew the certificate");
                return;
            }
        };
        match renew_once(&client, &cred).await {
            Ok(new) => {
                if let Err(e) = new.save(&dir, "node") {
                    warn!(error = %e, "cannot save the renewed certificate; retrying");
                    backoff.wait(None).await;
                    continue;
                }
                if new.ca_der != transport.roots() {
                    transport.set_roots(new.ca_der.clone());
                }
                if let Err(e) = transport.set_own(&new) {
                    warn!(error = %e, "cannot use the renewed certificate");
                }
                let next = new.identity().map(|w| w.not_after).unwrap_or(now);
                info!(
                    old_serial = %who.serial_hex,
                    valid_until = %humantime::format_rfc3339_seconds(next),
                    "certificate renewed"
                );
                backoff = crate::retry::Backoff::new(1_000, 60_000);
                // Signed by the old CA still (a manager that had not yet applied the
                // rotation): try again, not at once.
                let still_old = trust
                    .borrow()
                    .first()
                    .is_some_and(|ca| !pki::issued_by(&new.cert_der, ca));
                if still_old {
                    backoff.wait(None).await;
                }
            }
            Err(e) => {
                warn!(
                    error = %e,
                    expires = %humantime::format_rfc3339_seconds(who.not_after),
                    "certificate renewal failed; retrying"
                );
                backoff.wait(None).await;
            }
        }
    }
}

async fn renew_once(client: &Client, old: &Credential) -> anyhow::Result<Credential> {
    let key = Key::generate()?;
    let req = pb::RenewCertificateRequest {
        csr_der: key.request()?,
    };
    let issued = client
        .call(|mut s| {
            let req = req.clone();
            async move { s.cluster.renew_certificate(req).await }
        })
        .await?;
    let new = Credential {
        cert_der: issued.cert_der,
        chain_der: issued.chain_der,
        key_pkcs8: key.pkcs8_der().to_vec(),
        ca_der: if issued.ca_der.is_empty() {
            old.ca_der.clone()
        } else {
            issued.ca_der
        },
    };
    let (a, b) = (old.identity()?, new.identity()?);
    anyhow::ensure!(
        (a.role, &a.id, &a.cluster_id) == (b.role, &b.id, &b.cluster_id),
        "the renewed certificate names {}/{} instead of {}/{}",
        b.role.as_str(),
        b.id,
        a.role.as_str(),
        a.id
    );
    Ok(new)
}
