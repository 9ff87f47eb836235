//! Test harness: a real tracker on an ephemeral loopback port, and reqwest clients that pin its
//! fingerprint over TLS, with or without a client certificate.
//!
//! The pinned verifier is the workspace's one ([`torrentguard_trust::PinnedServerCert`], tested
//! on its own in that crate), so these tests check the tracker with the code its clients run.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::de::DeserializeOwned;
use torrentguard_protocol::api::ErrorBody;
use torrentguard_protocol::{Fingerprint, HashAlgo, Manifest};
use torrentguard_tracker::{Database, RunningTracker, TrackerConfig};
use torrentguard_trust::config::provider;
use torrentguard_trust::{Identity, Pin, PinnedServerCert};

pub mod nat;

/// Bound on every test's whole body; single requests have their own, shorter one.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn within<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .context("test timed out")?
}

/// Polls `check` until it returns `Some`, or fails after `deadline`. For waiting on a state
/// the server reaches in its own time (expiry), never a fixed sleep.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("{what}: not reached within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A rustls client configuration pinning `pin`, presenting `cert` and `key` if given.
pub fn tls_config(
    pin: Fingerprint,
    client_cert: Option<(
        CertificateDer<'static>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
) -> rustls::ClientConfig {
    let provider = provider();
    let verifier = Arc::new(PinnedServerCert::new(Pin::Exact(pin), &provider));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![cert], key)
            .expect("a generated key matches its certificate's algorithm"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Always offers one certificate and key, matching or not: lets a test present a certificate
/// it does not hold the key of, which `with_client_auth_cert` would refuse to build.
#[derive(Debug)]
struct AlwaysThis(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for AlwaysThis {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client configuration presenting `cert` while signing with `key` (of another identity).
pub fn forged_tls_config(
    pin: Fingerprint,
    cert: CertificateDer<'static>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
) -> rustls::ClientConfig {
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .expect("a generated key loads");
    let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signing_key));
    let verifier = Arc::new(PinnedServerCert::new(Pin::Exact(pin), &provider));
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(AlwaysThis(certified)))
}

/// A reqwest client pinning `pin`, with `identity` as its client certificate if given.
pub fn client(pin: Fingerprint, identity: Option<&Identity>) -> reqwest::Client {
    client_with(tls_config(
        pin,
        identity.map(|i| (i.cert.clone(), i.key.clone_key())),
    ))
}

pub fn client_with(config: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("client configuration is valid")
}

/// A tracker on 127.0.0.1:0 with its data in `dir`, configured further by `tweak`.
pub async fn start_in(
    dir: &Path,
    tweak: impl FnOnce(&mut TrackerConfig),
) -> Result<RunningTracker> {
    start_in_on(dir, &Backend::Sqlite, tweak).await
}

/// [`start_in`] with its store on `backend`.
pub async fn start_in_on(
    dir: &Path,
    backend: &Backend,
    tweak: impl FnOnce(&mut TrackerConfig),
) -> Result<RunningTracker> {
    let mut config = TrackerConfig::new("127.0.0.1:0".parse()?, dir.to_path_buf());
    backend.configure(&mut config);
    tweak(&mut config);
    Ok(torrentguard_tracker::start(config).await?)
}

/// A running tracker, its data directory, and clients for it.
pub struct Harness {
    pub tracker: RunningTracker,
    pub dir: tempfile::TempDir,
    pub base: String,
    /// No client certificate: what curl or a browser would be.
    pub anonymous: reqwest::Client,
    pub alice: Identity,
    pub bob: Identity,
    /// The store the tracker runs on; a PostgreSQL test database lives as long as this does.
    pub backend: Backend,
}

impl Harness {
    pub async fn start(tweak: impl FnOnce(&mut TrackerConfig)) -> Result<Self> {
        Self::start_on(&Backend::Sqlite, tweak).await
    }

    /// A tracker whose store is on `backend`.
    pub async fn start_on(
        backend: &Backend,
        tweak: impl FnOnce(&mut TrackerConfig),
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let tracker = start_in_on(dir.path(), backend, tweak).await?;
        let mut h = Self::around(tracker, dir);
        h.backend = backend.clone();
        Ok(h)
    }

    pub fn around(tracker: RunningTracker, dir: tempfile::TempDir) -> Self {
        Harness {
            base: tracker.url(),
            anonymous: client(tracker.fingerprint, None),
            alice: Identity::generate("alice").expect("key generation works"),
            bob: Identity::generate("bob").expect("key generation works"),
            tracker,
            dir,
            backend: Backend::Sqlite,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    pub fn as_peer(&self, identity: &Identity) -> reqwest::Client {
        client(self.tracker.fingerprint, Some(identity))
    }
}

/// Reads a JSON body after checking the status.
pub async fn expect_json<T: DeserializeOwned>(resp: reqwest::Response, status: u16) -> Result<T> {
    let got = resp.status().as_u16();
    let text = resp.text().await?;
    if got != status {
        bail!("expected status {status}, got {got}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("decoding {text}"))
}

/// Checks that `resp` is an error with `status` and the JSON body `{"error":{"code":code,..}}`.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Result<String> {
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body: ErrorBody = expect_json(resp, status).await?;
    if body.error.code != code {
        bail!(
            "expected error code {code}, got {}: {}",
            body.error.code,
            body.error.message
        );
    }
    if !ctype.starts_with("application/json") {
        bail!("error content type is {ctype:?}");
    }
    Ok(body.error.message)
}

/// A valid manifest of `data` in 16 KiB chunks, built without the streaming hasher.
pub fn manifest_for(name: &str, data: &[u8]) -> Manifest {
    let chunk_size = 16 * 1024;
    Manifest::single(
        name,
        data.len() as u64,
        chunk_size,
        HashAlgo::Sha256,
        data.chunks(chunk_size as usize)
            .map(|c| HashAlgo::Sha256.digest(c))
            .collect(),
        HashAlgo::Sha256.digest(data),
    )
}

/// A raw TLS connection to `server` from `local_ip`, no client certificate, offering `alpn`:
/// for tests that must control every byte, or hold a connection open without a request.
pub async fn raw_tls(
    server: std::net::SocketAddr,
    local_ip: std::net::IpAddr,
    pin: Fingerprint,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(local_ip, 0))?;
    let tcp = socket.connect(server).await?;
    let mut config = tls_config(pin, None);
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("torrentguard-tracker")?;
    Ok(connector.connect(name, tcp).await?)
}

/// Reads until the server closes the connection, within `deadline`; returns what came. A close
/// without TLS close_notify counts as closed too: the server may just drop the socket.
pub async fn read_until_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    deadline: Duration,
) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut seen = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(anyhow::Error::from(e)),
            }
        }
    };
    tokio::time::timeout(deadline, read_all)
        .await
        .with_context(|| {
            format!("the server did not close the connection within {deadline:?}")
        })??;
    Ok(seen)
}

/// The value of an unlabelled series in the `/metrics` text.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Whether `curl` can be run here (the curl checks skip with a message when not).
pub fn curl_available() -> bool {
    let found = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        eprintln!("curl is not installed: skipping the curl half of this check");
    }
    found
}

/// One curl run against the tracker (`-k`: these tests pin with their own client, curl only
/// shows what a user sees): exit status, `<status> <version>`, and the body with curl's stderr.
pub async fn curl<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<(bool, String, String)> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-k", "--max-time", "20"])
        .args(args)
        .args(["-w", "\n%{http_code} %{http_version}"])
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let detail = format!("{}{}", body, String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), status.to_string(), detail))
}

/// The PostgreSQL server the PostgreSQL variants of the tests run on (an admin URL, e.g.
/// `postgres://tg@127.0.0.1:PORT/postgres`); each test gets a fresh database on it.
pub const POSTGRES_ENV: &str = "TORRENTGUARD_TEST_POSTGRES";
/// Set to 1 (CI does), a missing [`POSTGRES_ENV`] fails the PostgreSQL variants instead of
/// skipping them.
pub const REQUIRE_POSTGRES_ENV: &str = "TORRENTGUARD_REQUIRE_POSTGRES";

/// The store a test's tracker runs on.
#[derive(Clone)]
pub enum Backend {
    /// A SQLite file in the tracker's data directory (the default).
    Sqlite,
    /// A database of its own on the server of [`POSTGRES_ENV`].
    Postgres(Arc<TestDatabase>),
}

impl Backend {
    /// A fresh PostgreSQL database, or `None` (the caller skips) when no server is configured
    /// and none is required.
    pub async fn postgres() -> Result<Option<Backend>> {
        let admin = match std::env::var(POSTGRES_ENV) {
            Ok(url) if !url.is_empty() => url,
            _ if std::env::var(REQUIRE_POSTGRES_ENV).as_deref() == Ok("1") => {
                bail!(
                    "{REQUIRE_POSTGRES_ENV}=1 but {POSTGRES_ENV} is not set: no PostgreSQL to test on"
                )
            }
            _ => {
                eprintln!(
                    "skipping the PostgreSQL variant: set {POSTGRES_ENV}=postgres://USER@HOST:PORT/DB \
                     (contrib/postgres/throwaway-postgres start prints one)"
                );
                return Ok(None);
            }
        };
        Ok(Some(Backend::Postgres(Arc::new(
            TestDatabase::create(&admin).await?,
        ))))
    }

    /// Points `config` at this backend's store.
    pub fn configure(&self, config: &mut TrackerConfig) {
        if let Backend::Postgres(db) = self {
            config.database = Some(Database::Postgres(db.url.clone()));
        }
    }

    /// The database of this backend; `sqlite_file` for SQLite.
    pub fn database(&self, sqlite_file: &Path) -> Database {
        match self {
            Backend::Sqlite => Database::Sqlite(sqlite_file.to_path_buf()),
            Backend::Postgres(db) => Database::Postgres(db.url.clone()),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }
}

/// A database created for one test (`tg_<random>`), dropped when this is.
pub struct TestDatabase {
    admin: String,
    name: String,
    /// Its URL: the admin URL with the database replaced.
    pub url: String,
}

impl TestDatabase {
    pub async fn create(admin: &str) -> Result<Self> {
        use sqlx::Connection as _;
        use std::hash::{BuildHasher as _, Hasher as _};
        // RandomState is seeded randomly per process and per instance: enough for a unique name.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let name = format!("tg_{random:016x}");
        let mut conn =
            tokio::time::timeout(Duration::from_secs(20), sqlx::PgConnection::connect(admin))
                .await
                .with_context(|| format!("connecting to {POSTGRES_ENV}={admin}: timed out"))?
                .with_context(|| format!("connecting to {POSTGRES_ENV}={admin}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating the test database {name}"))?;
        conn.close().await?;
        let mut url = reqwest::Url::parse(admin).context("parsing the admin URL")?;
        url.set_path(&format!("/{name}"));
        Ok(TestDatabase {
            admin: admin.to_string(),
            name,
            url: url.to_string(),
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        use sqlx::Connection as _;
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop cannot await and may run on a runtime thread: a thread with its own runtime.
        // FORCE ends the connections of a tracker the test left running.
        let dropped = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

/// Turns `async fn name(backend: Backend) -> Result<()>` (defined beside it) into a module
/// `name` of two tests, `name::sqlite` and `name::postgres`: one body, run on each store.
/// Attributes before the name (`#[ignore = "…"]`) go on both tests.
#[allow(unused_macros)] // Test binaries of TLS and framing tests run on SQLite only.
macro_rules! for_each_store {
    ($(#[$meta:meta])* $name:ident) => {
        mod $name {
            #[tokio::test]
            $(#[$meta])*
            async fn sqlite() -> anyhow::Result<()> {
                super::$name($crate::common::Backend::Sqlite).await
            }

            #[tokio::test]
            $(#[$meta])*
            async fn postgres() -> anyhow::Result<()> {
                match $crate::common::Backend::postgres().await? {
                    Some(backend) => super::$name(backend).await,
                    None => Ok(()),
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use for_each_store;
