//! Pulling an image on the client side, so that containerd 1.6 (no Transfer service) works:
//! resolve and fetch from the registry with `oci-client` (every blob's digest verified while
//! it streams, and again by containerd's content store on commit), write through the
//! Content service under a lease, unpack layers through Snapshots + Diff, record the image.
//! GC labels tie index → manifest → config/layers → the unpacked snapshot chain, as
//! containerd's own pull does, so nothing is collected once the lease ends.

use super::{status_to_error, Conn, ImageInfo, SNAPSHOTTER};
use crate::worker::containerd::spec::ImageDefaults;
use crate::worker::runtime::RuntimeError;
use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use containerd_client::services::v1::{
    content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
    leases_client::LeasesClient, ApplyRequest, CreateImageRequest, GetImageRequest, Image, InfoRequest,
    ReadContentRequest, UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use futures::{SinkExt, StreamExt};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Manifests, indexes and image configs read into memory are at most this large (real ones
/// are a few KiB; Docker's own limit for a manifest is 4 MiB).
pub const MAX_METADATA_BYTES: usize = 4 << 20;
/// Blob bytes per Content.Write message.
const WRITE_CHUNK_BYTES: usize = 1 << 20;
/// A blob download that sends nothing for this long is given up (no overall deadline: a big
/// layer on a slow link takes as long as it takes).
const BLOB_STALL: std::time::Duration = std::time::Duration::from_secs(60);
/// A pull's lease expires on its own after this long, should the worker die mid-pull.
const LEASE_EXPIRE_SECS: u64 = 24 * 3600;

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Desc {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Deserialize, Clone, Debug, Default)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
}

#[derive(Deserialize, Debug, Default)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<ContainerConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    healthcheck: Option<ImageHealthcheck>,
}

/// Docker's `HEALTHCHECK` in an image config (durations in nanoseconds; 0 = the default).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
struct ImageHealthcheck {
    #[serde(default)]
    test: Vec<String>,
    #[serde(default)]
    interval: u64,
    #[serde(default)]
    timeout: u64,
    #[serde(default)]
    start_period: u64,
    #[serde(default)]
    retries: u32,
}

impl ImageHealthcheck {
    /// The check it describes: `["CMD", args...]`, `["CMD-SHELL", command]`; `["NONE"]` or
    /// anything else is none.
    fn check(&self) -> Option<crate::core::HealthCheck> {
        let cmd = match self.test.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
            Some((kind, [command])) if kind == "CMD-SHELL" => {
                vec!["/bin/sh".into(), "-c".into(), command.clone()]
            }
            _ => return None,
        };
        let d = crate::core::HealthCheck::default();
        let ms = |ns: u64, default: u64| if ns == 0 { default } else { (ns / 1_000_000).max(1) };
        Some(crate::core::HealthCheck {
            cmd,
            interval_ms: ms(self.interval, d.interval_ms),
            timeout_ms: ms(self.timeout, d.timeout_ms),
            retries: if self.retries == 0 {
                d.retries
            } else {
                self.retries
            },
            start_period_ms: ms(self.start_period, 0),
        })
    }
}

#[derive(Deserialize, Debug, Default)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// This host's platform as image indexes name it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn is_index(media_type: &str, m: &Manifest) -> bool {
    media_type == OCI_IMAGE_INDEX_MEDIA_TYPE
        || media_type == IMAGE_MANIFEST_LIST_MEDIA_TYPE
        || m.manifests.is_some()
}

/// The manifest of an index for linux/`arch`, or what the index offers instead.
pub fn pick_platform(manifests: &[Desc], arch: &str) -> Result<Desc, String> {
    manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .cloned()
        .ok_or_else(|| {
            let offered: Vec<String> = manifests
                .iter()
                .filter_map(|d| {
                    d.platform
                        .as_ref()
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                })
                .collect();
            format!(
                "no image for this host's platform linux/{arch} (the image offers: {})",
                if offered.is_empty() {
                    "none named".to_string()
                } else {
                    offered.join(", ")
                }
            )
        })
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Snapshot chain ids from the layers' diff ids (the OCI image spec's ChainID).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn parse_config(bytes: &[u8]) -> Result<(ImageDefaults, Vec<String>), String> {
    let c: ImageConfig =
        serde_json::from_slice(bytes).map_err(|e| format!("the image config is not valid JSON: {e}"))?;
    // A single-platform image names its platform in its config (an index was checked before).
    let (os, arch) = (c.os.as_str(), c.architecture.as_str());
    if (!os.is_empty() && os != "linux") || (!arch.is_empty() && arch != host_arch()) {
        return Err(format!(
            "the image is for {os}/{arch}, not this host's platform linux/{}",
            host_arch()
        ));
    }
    let cc = c.config.unwrap_or_default();
    let defaults = ImageDefaults {
        entrypoint: cc.entrypoint.unwrap_or_default(),
        cmd: cc.cmd.unwrap_or_default(),
        env: cc.env.unwrap_or_default(),
        working_dir: cc.working_dir.unwrap_or_default(),
        user: cc.user.unwrap_or_default(),
        healthcheck: cc.healthcheck.and_then(|h| h.check()),
    };
    Ok((defaults, c.rootfs.unwrap_or_default().diff_ids))
}

fn descriptor(d: &Desc) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: HashMap::new(),
    }
}

/// Registry access settings (`--insecure-registry`, `--registry-auth-file`).
#[derive(Clone, Debug, Default)]
pub struct RegistryOpts {
    pub insecure: Vec<String>,
    pub credentials: super::auth::Credentials,
}

pub struct Puller {
    client: oci_client::Client,
    creds: super::auth::Credentials,
}

fn pull_err(image: &str, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Pull {
        image: image.to_string(),
        reason: crate::core::limits::prefix(&reason.to_string(), 512).to_string(),
    }
}

/// Registry errors in words an operator acts on.
/// `had_credentials`: the auth file named this registry.
fn registry_err(
    image: &str,
    had_credentials: bool,
    e: oci_client::errors::OciDistributionError,
) -> RuntimeError {
    use oci_client::errors::OciDistributionError as E;
    let reason = match &e {
        E::UnauthorizedError { url } if had_credentials => {
            format!("the registry refused the credentials --registry-auth-file gives for it ({url})")
        }
        E::AuthenticationFailure(m) => {
            format!("the registry refused the credentials ({m}); check --registry-auth-file")
        }
        E::UnauthorizedError { url } => {
            format!("not authorized at {url}: give credentials with --registry-auth-file")
        }
        E::ImageManifestNotFoundError(m) => format!("no such image or tag ({m})"),
        E::RegistryError { envelope, url } => {
            use oci_client::errors::OciErrorCode as C;
            let codes: Vec<&C> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    C::ManifestUnknown | C::NameUnknown | C::NotFound | C::BlobUnknown
                )
            }) {
                format!("no such image or tag in the registry ({url})")
            } else if codes.iter().any(|c| matches!(c, C::Unauthorized | C::Denied)) {
                format!("the registry refused access ({url}): check --registry-auth-file")
            } else {
                format!("the registry answered {envelope} ({url})")
            }
        }
        E::RequestError(r) if r.is_connect() || r.is_timeout() => {
            // The innermost cause says what happened ("Connection refused", a DNS failure).
            let mut cause: &dyn std::error::Error = r;
            while let Some(next) = cause.source() {
                cause = next;
            }
            let url = r.url().map(|u| u.to_string()).unwrap_or_default();
            format!("cannot reach the registry at {url}: {cause}")
        }
        other => other.to_string(),
    };
    pull_err(image, reason)
}

impl Puller {
    pub fn new(opts: &RegistryOpts) -> Self {
        // One TLS provider for the process (ring); a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::HttpsExcept(opts.insecure.clone()),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        Puller {
            client: oci_client::Client::new(cfg),
            creds: opts.credentials.clone(),
        }
    }

    fn auth(&self, r: &Reference) -> RegistryAuth {
        match self.creds.for_host(r.resolve_registry()) {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// The reference and the full name containerd records an image under
/// (`docker.io/library/busybox:latest`), from a reference the managers validated.
pub fn image_name(image: &str) -> Result<(Reference, String), RuntimeError> {
    let p = crate::core::validate::image_parts(image);
    let r = match (p.tag, p.digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(p.registry, p.repository, t, d),
        (Some(t), None) => Reference::with_tag(p.registry, p.repository, t),
        (None, Some(d)) => Reference::with_digest(p.registry, p.repository, d),
        (None, None) => return Err(pull_err(image, "not a valid image reference")),
    };
    let name = r.whole();
    Ok((r, name))
}

impl Conn {
    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, tonic::Status> {
        let mut s = ContentClient::new(self.channel.clone())
            .read(self.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(part) = s.message().await? {
            out.extend_from_slice(&part.data);
            if out.len() > MAX_METADATA_BYTES {
                return Err(tonic::Status::out_of_range(format!(
                    "{digest} is over {MAX_METADATA_BYTES} bytes"
                )));
            }
        }
        Ok(out)
    }

    async fn has_blob(&self, digest: &str) -> Result<bool, tonic::Status> {
        match ContentClient::new(self.channel.clone())
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(s),
        }
    }

    async fn has_snapshot(&self, key: &str) -> Result<bool, tonic::Status> {
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.req(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(s),
        }
    }

    /// An image already in containerd, fully unpacked: its defaults and top snapshot.
    pub async fn resolve_local(&self, name: &str) -> Result<Option<ImageInfo>, tonic::Status> {
        let img = match ImagesClient::new(self.channel.clone())
            .get(self.req(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(s),
        };
        let Some(target) = img.and_then(|i| i.target) else {
            return Ok(None);
        };
        let mut digest = target.digest;
        for _ in 0..2 {
            if !self.has_blob(&digest).await? {
                return Ok(None);
            }
            let bytes = self.read_blob(&digest).await?;
            let m: Manifest = serde_json::from_slice(&bytes).unwrap_or_default();
            if let Some(ms) = &m.manifests {
                match pick_platform(ms, host_arch()) {
                    Ok(d) => {
                        digest = d.digest;
                        continue;
                    }
                    Err(_) => return Ok(None),
                }
            }
            let Some(cfg) = m.config else { return Ok(None) };
            if !self.has_blob(&cfg.digest).await? {
                return Ok(None);
            }
            let Ok((defaults, diff_ids)) = parse_config(&self.read_blob(&cfg.digest).await?) else {
                return Ok(None);
            };
            let top = chain_ids(&diff_ids).pop().unwrap_or_default();
            if top.is_empty() || !self.has_snapshot(&top).await? {
                return Ok(None);
            }
            return Ok(Some(ImageInfo {
                defaults,
                top_chain: top,
            }));
        }
        Ok(None)
    }

    /// Writes `data` (already in memory) as a blob with `labels`; existing content is kept.
    async fn write_small(
        &self,
        lease: &str,
        digest: &str,
        data: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<(), tonic::Status> {
        let total = data.len() as i64;
        let chunks = futures::stream::iter(vec![Ok(bytes::Bytes::from(data))]);
        self.write_blob(lease, digest, total, chunks, labels).await
    }

    /// Streams a blob into the content store, committing it under `digest` (containerd
    /// checks size and digest on commit).
    async fn write_blob<S>(
        &self,
        lease: &str,
        digest: &str,
        total: i64,
        mut chunks: S,
        labels: HashMap<String, String>,
    ) -> Result<(), tonic::Status>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin + Send,
    {
        let r#ref = format!("warren-{}-{:x}", digest, rand_u64());
        let (mut tx, rx) = futures::channel::mpsc::channel::<WriteContentRequest>(2);
        let msg = |action: WriteAction, offset: i64, data: Vec<u8>, labels: HashMap<String, String>| {
            WriteContentRequest {
                action: action as i32,
                r#ref: r#ref.clone(),
                total,
                expected: digest.to_string(),
                offset,
                data,
                labels,
            }
        };
        let producer = async move {
            let mut offset = 0i64;
            let mut buf: Vec<u8> = Vec::new();
            loop {
                let part = match tokio::time::timeout(BLOB_STALL, chunks.next()).await {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(_) => {
                        return Err(tonic::Status::deadline_exceeded(format!(
                            "fetching {digest}: the registry sent nothing for {} s",
                            BLOB_STALL.as_secs()
                        )))
                    }
                };
                let part = part.map_err(|e| tonic::Status::data_loss(format!("fetching {digest}: {e}")))?;
                buf.extend_from_slice(&part);
                if buf.len() >= WRITE_CHUNK_BYTES {
                    let data = std::mem::take(&mut buf);
                    let n = data.len() as i64;
                    tx.send(msg(WriteAction::Write, offset, data, HashMap::new()))
                        .await
                        .map_err(|_| tonic::Status::aborted("content write closed"))?;
                    offset += n;
                }
            }
            tx.send(msg(WriteAction::Commit, offset, buf, labels))
                .await
                .map_err(|_| tonic::Status::aborted("content write closed"))?;
            Ok::<(), tonic::Status>(())
        };
        let consumer = async {
            let mut responses = ContentClient::new(self.channel.clone())
                .write(self.leased(rx, lease))
                .await?
                .into_inner();
            while let Some(r) = responses.message().await? {
                if r.action == WriteAction::Commit as i32 {
                    return Ok(());
                }
            }
            Err(tonic::Status::aborted(
                "containerd closed the content write before the commit",
            ))
        };
        match futures::future::try_join(producer, consumer).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(s),
        }
    }

    /// Pulls `image` unless it is already here; returns what starting a container needs.
    pub async fn pull(&self, puller: &Puller, image: &str) -> Result<ImageInfo, RuntimeError> {
        let (reference, name) = image_name(image)?;
        if let Some(info) = self.resolve_local(&name).await.map_err(status_to_error)? {
            return Ok(info);
        }
        let lease_id = self
            .lease("pull", LEASE_EXPIRE_SECS)
            .await
            .map_err(status_to_error)?;
        let result = self
            .pull_leased(puller, image, &reference, &name, &lease_id)
            .await;
        self.drop_lease(lease_id).await;
        result
    }

    /// A lease that protects what is written under it from containerd's GC, and expires on
    /// its own after `expire_secs` should this process die before dropping it.
    pub(super) async fn lease(&self, what: &str, expire_secs: u64) -> Result<String, tonic::Status> {
        let id = format!("warren-{what}-{:x}", rand_u64());
        let expire = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + std::time::Duration::from_secs(expire_secs),
        )
        .to_string();
        LeasesClient::new(self.channel.clone())
            .create(self.req(containerd_client::services::v1::CreateRequest {
                id: id.clone(),
                labels: [("containerd.io/gc.expire".to_string(), expire)].into(),
            }))
            .await?;
        Ok(id)
    }

    pub(super) async fn drop_lease(&self, id: String) {
        let _ = LeasesClient::new(self.channel.clone())
            .delete(self.req(containerd_client::services::v1::DeleteRequest { id, sync: false }))
            .await;
    }

    async fn pull_leased(
        &self,
        puller: &Puller,
        image: &str,
        reference: &Reference,
        name: &str,
        lease: &str,
    ) -> Result<ImageInfo, RuntimeError> {
        let auth = puller.auth(reference);
        let had_creds = !matches!(auth, RegistryAuth::Anonymous);
        let accepted = [
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
            OCI_IMAGE_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
        ];
        let cd = |s: tonic::Status| status_to_error(s);
        let (root_bytes, root_digest) = puller
            .client
            .pull_manifest_raw(reference, &auth, &accepted)
            .await
            .map_err(|e| registry_err(image, had_creds, e))?;
        let check = |bytes: &[u8], want: &str| -> Result<(), RuntimeError> {
            let got = sha256_digest(bytes);
            if got != want {
                return Err(pull_err(
                    image,
                    format!("the registry sent content with digest {got}, not {want}"),
                ));
            }
            Ok(())
        };
        check(&root_bytes, &root_digest)?;
        if let Some(want) = reference.digest() {
            check(&root_bytes, want)?;
        }
        let root: Manifest = serde_json::from_slice(&root_bytes)
            .map_err(|e| pull_err(image, format!("the manifest is not valid JSON: {e}")))?;
        let root_media = if root.media_type.is_empty() {
            if root.manifests.is_some() {
                OCI_IMAGE_INDEX_MEDIA_TYPE
            } else {
                OCI_IMAGE_MEDIA_TYPE
            }
            .to_string()
        } else {
            root.media_type.clone()
        };
        let root_desc = Desc {
            media_type: root_media.clone(),
            digest: root_digest.clone(),
            size: root_bytes.len() as i64,
            platform: None,
        };
        // An index: the manifest for this host, fetched by digest.
        let (manifest, manifest_desc, index) = if is_index(&root_media, &root) {
            let chosen = pick_platform(root.manifests.as_deref().unwrap_or_default(), host_arch())
                .map_err(|e| pull_err(image, e))?;
            let by_digest = reference.clone_with_digest(chosen.digest.clone());
            let (bytes, digest) = puller
                .client
                .pull_manifest_raw(&by_digest, &auth, &accepted)
                .await
                .map_err(|e| registry_err(image, had_creds, e))?;
            check(&bytes, &chosen.digest)?;
            if digest != chosen.digest {
                return Err(pull_err(
                    image,
                    format!("asked for {}, got {digest}", chosen.digest),
                ));
            }
            let m: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| pull_err(image, format!("the platform manifest is not valid JSON: {e}")))?;
            (m, (chosen, bytes), Some(root_bytes))
        } else {
            (root, (root_desc.clone(), root_bytes), None)
        };
        let config = manifest
            .config
            .clone()
            .ok_or_else(|| pull_err(image, "the manifest names no config (not a container image)"))?;
        if config.size as usize > MAX_METADATA_BYTES {
            return Err(pull_err(
                image,
                format!(
                    "the image config is {} bytes; at most {MAX_METADATA_BYTES}",
                    config.size
                ),
            ));
        }
        let mut config_bytes: Vec<u8> = Vec::new();
        puller
            .client
            .pull_blob(reference, &oci_desc(&config), &mut config_bytes)
            .await
            .map_err(|e| registry_err(image, had_creds, e))?;
        let (defaults, diff_ids) = parse_config(&config_bytes).map_err(|e| pull_err(image, e))?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(pull_err(
                image,
                format!(
                    "the manifest has {} layers but the config {} diff ids",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let chains = chain_ids(&diff_ids);
        let top = chains
            .last()
            .cloned()
            .ok_or_else(|| pull_err(image, "the image has no layers"))?;

        // Layers first, then what references them: the GC labels only ever point at
        // content that exists.
        for layer in &manifest.layers {
            if self.has_blob(&layer.digest).await.map_err(cd)? {
                continue;
            }
            let stream = puller
                .client
                .pull_blob_stream(reference, &oci_desc(layer))
                .await
                .map_err(|e| registry_err(image, had_creds, e))?;
            self.write_blob(lease, &layer.digest, layer.size, stream.stream, HashMap::new())
                .await
                .map_err(|s| pull_err(image, format!("storing layer {}: {}", layer.digest, s.message())))?;
        }
        let snap_label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
        self.write_small(
            lease,
            &config.digest,
            config_bytes,
            [(snap_label, top.clone())].into(),
        )
        .await
        .map_err(cd)?;
        let mut mlabels: HashMap<String, String> = [(
            "containerd.io/gc.ref.content.config".to_string(),
            config.digest.clone(),
        )]
        .into();
        for (i, l) in manifest.layers.iter().enumerate() {
            mlabels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        let (mdesc, mbytes) = manifest_desc;
        self.write_small(lease, &mdesc.digest, mbytes.to_vec(), mlabels)
            .await
            .map_err(cd)?;
        if let Some(ibytes) = index {
            let ilabels = [(
                "containerd.io/gc.ref.content.m.0".to_string(),
                mdesc.digest.clone(),
            )]
            .into();
            self.write_small(lease, &root_desc.digest, ibytes.to_vec(), ilabels)
                .await
                .map_err(cd)?;
        }

        // Unpack: one committed snapshot per chain id, each on its parent.
        for (i, (layer, chain)) in manifest.layers.iter().zip(&chains).enumerate() {
            if self.has_snapshot(chain).await.map_err(cd)? {
                continue;
            }
            let parent = if i == 0 {
                String::new()
            } else {
                chains[i - 1].clone()
            };
            self.unpack_layer(lease, image, layer, &diff_ids[i], chain, &parent)
                .await?;
        }

        let record = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(descriptor(&root_desc)),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(self.channel.clone());
        match images
            .create(self.req(CreateImageRequest {
                image: Some(record.clone()),
                source_date_epoch: None,
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                images
                    .update(self.req(UpdateImageRequest {
                        image: Some(record),
                        update_mask: None,
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(cd)?;
            }
            Err(s) => return Err(cd(s)),
        }
        Ok(ImageInfo {
            defaults,
            top_chain: top,
        })
    }

    async fn unpack_layer(
        &self,
        lease: &str,
        image: &str,
        layer: &Desc,
        diff_id: &str,
        chain: &str,
        parent: &str,
    ) -> Result<(), RuntimeError> {
        let cd = |s: tonic::Status| status_to_error(s);
        let key = format!("warren-extract-{:x} {chain}", rand_u64());
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let mounts = snaps
            .prepare(self.leased(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .map_err(cd)?
            .into_inner()
            .mounts;
        let applied = DiffClient::new(self.channel.clone())
            .apply(self.leased(
                ApplyRequest {
                    diff: Some(descriptor(layer)),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                lease,
            ))
            .await;
        let outcome = match applied {
            Ok(r) => match r.into_inner().applied {
                Some(d) if d.digest == diff_id => Ok(()),
                Some(d) => Err(pull_err(
                    image,
                    format!(
                        "layer {} unpacks to {}, but the config says {diff_id}",
                        layer.digest, d.digest
                    ),
                )),
                None => Err(pull_err(
                    image,
                    format!("containerd did not unpack layer {}", layer.digest),
                )),
            },
            Err(s) => Err(pull_err(
                image,
                format!("unpacking layer {}: {}", layer.digest, s.message()),
            )),
        };
        if let Err(e) = outcome {
            let _ = snaps
                .remove(self.req(RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key,
                }))
                .await;
            return Err(e);
        }
        match snaps
            .commit(self.leased(
                CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: chain.to_string(),
                    key,
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
        {
            Ok(_) => Ok(()),
            // Another pull of an image sharing this layer got there first.
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(cd(s)),
        }
    }
}

fn oci_desc(d: &Desc) -> oci_client::manifest::OciDescriptor {
    oci_client::manifest::OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        ..Default::default()
    }
}

/// Unique names for leases, ingests and extraction keys (not a decision: the production
/// path only, never simulated).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Docker's HEALTHCHECK in an image config: CMD, CMD-SHELL, NONE; durations in ns, 0 =
    /// the default.
    #[test]
    fn image_healthchecks() {
        let parse = |hc: &str| {
            let cfg =
                format!(r#"{{"os":"linux","config":{{"Healthcheck":{hc}}},"rootfs":{{"diff_ids":[]}}}}"#);
            parse_config(cfg.as_bytes()).unwrap().0.healthcheck
        };
        let shell =
            parse(r#"{"Test":["CMD-SHELL","wget -q -O- localhost"],"Interval":5000000000,"Retries":2}"#)
                .unwrap();
        assert_eq!(shell.cmd, vec!["/bin/sh", "-c", "wget -q -O- localhost"]);
        assert_eq!(
            (
                shell.interval_ms,
                shell.timeout_ms,
                shell.retries,
                shell.start_period_ms
            ),
            (5_000, 30_000, 2, 0)
        );
        let exec = parse(r#"{"Test":["CMD","/check","--fast"],"StartPeriod":10000000000}"#).unwrap();
        assert_eq!(exec.cmd, vec!["/check", "--fast"]);
        assert_eq!(exec.start_period_ms, 10_000);
        assert_eq!(parse(r#"{"Test":["NONE"]}"#), None);
        assert_eq!(parse(r#"{"Test":["CMD"]}"#), None);
        assert_eq!(parse("null"), None);
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let ids = chain_ids(&[d('a'), d('b')]);
        assert_eq!(ids[0], d('a'));
        assert_eq!(ids[1], sha256_digest(format!("{} {}", d('a'), d('b')).as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn platform_choice_names_what_is_offered() {
        let m = |os: &str, arch: &str, dg: &str| Desc {
            digest: dg.into(),
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
            }),
            ..Default::default()
        };
        let list = vec![
            m("linux", "arm64", "a"),
            m("linux", "amd64", "b"),
            m("windows", "amd64", "c"),
        ];
        assert_eq!(pick_platform(&list, "amd64").unwrap().digest, "b");
        let e = pick_platform(&list[..1], "amd64").unwrap_err();
        assert!(e.contains("linux/amd64") && e.contains("linux/arm64"), "{e}");
    }

    #[test]
    fn config_defaults_and_diff_ids() {
        let (d, ids) = parse_config(
            &r#"{"architecture":"ARCH","os":"linux","config":{"Cmd":["/bin/httpd"],"Env":["PATH=/bin"],"WorkingDir":"/w"},"rootfs":{"type":"layers","diff_ids":["sha256:1"]}}"#.replace("ARCH", host_arch()).into_bytes(),
        )
        .unwrap();
        assert_eq!(d.cmd, vec!["/bin/httpd"]);
        assert_eq!(d.working_dir, "/w");
        assert_eq!(ids, vec!["sha256:1"]);
        assert!(parse_config(b"nope").is_err());
        let e =
            parse_config(br#"{"architecture":"s390x","os":"linux","rootfs":{"diff_ids":[]}}"#).unwrap_err();
        assert!(
            e.contains("linux/s390x") && e.contains("this host's platform"),
            "{e}"
        );
    }
}
