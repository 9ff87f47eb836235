//! A long-lived key pair and self-signed certificate, kept in a data directory.
//!
//! The tracker and the peer agent both keep one, and are identified by the SHA-256 fingerprint
//! of its certificate.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use torrentguard_protocol::Fingerprint;

pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
/// Held while the identity is created, so concurrent first starts agree on one key pair.
pub const LOCK_FILE: &str = ".identity.lock";

/// A certificate, its private key and its fingerprint.
#[derive(Debug)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub fingerprint: Fingerprint,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a usable PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("generating the key pair or certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Identity {
    /// Generates a fresh self-signed identity in memory (ECDSA P-256).
    pub fn generate(common_name: &str) -> Result<Self, IdentityError> {
        let (cert_pem, key_pem) = generate_pem(common_name)?;
        let here = Path::new("<generated>");
        Self::from_pem(cert_pem.as_bytes(), key_pem.as_bytes(), here, here)
    }

    /// Loads `cert.pem` and `key.pem` from `dir`, creating both on first use (the directory with
    /// mode 0700 and the key with 0600). Returns the identity and whether it was just created.
    pub fn load_or_create(dir: &Path, common_name: &str) -> Result<(Self, bool), IdentityError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            return Ok((Self::from_pem_files(&cert_path, &key_path)?, false));
        }
        create_private_dir(dir)?;
        // Two first starts on one directory must not both generate: the second would replace
        // the first's key under its certificate. An exclusive lock serialises them, and the
        // loser then finds and loads the winner's pair.
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        if cert_path.exists() && key_path.exists() {
            return Ok((Self::from_pem_files(&cert_path, &key_path)?, false));
        }
        let (cert_pem, key_pem) = generate_pem(common_name)?;
        // Key first, so a crash in between leaves no certificate without its key.
        write_atomically(&key_path, key_pem.as_bytes(), 0o600)?;
        write_atomically(&cert_path, cert_pem.as_bytes(), 0o644)?;
        Ok((Self::from_pem_files(&cert_path, &key_path)?, true))
    }

    /// Loads operator-provided PEM files (the first certificate of the chain is the identity).
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        let cert = fs::read(cert_path).map_err(io_err(cert_path))?;
        let key = fs::read(key_path).map_err(io_err(key_path))?;
        Self::from_pem(&cert, &key, cert_path, key_path)
    }

    fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, IdentityError> {
        let cert = CertificateDer::from_pem_slice(cert_pem).map_err(|_| IdentityError::Pem {
            path: cert_path.to_path_buf(),
            what: "certificate",
        })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| IdentityError::Pem {
            path: key_path.to_path_buf(),
            what: "private key",
        })?;
        let fingerprint = Fingerprint::of_der(&cert);
        Ok(Identity {
            cert,
            key,
            fingerprint,
        })
    }
}

fn generate_pem(common_name: &str) -> Result<(String, String), IdentityError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![common_name.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    // Long-lived: identity is the fingerprint, not the validity period, and rotating it would
    // change who the peer is.
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Creates `dir` (and parents); on Unix a newly created directory is private (0700).
pub fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io_err(dir))
}

/// Writes `data` to `path` via a temporary file, fsync and rename, with `mode` on Unix.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    // A name of our own, so concurrent writers of the same file never share a temporary.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        let (a, created) = Identity::load_or_create(&sub, "test").unwrap();
        assert!(created);
        let (b, created) = Identity::load_or_create(&sub, "test").unwrap();
        assert!(!created);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint, Fingerprint::of_der(&b.cert));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(sub.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_ne!(Identity::generate("x").unwrap().fingerprint, a.fingerprint);
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_identity() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("shared");
        let fps: Vec<_> = (0..8)
            .map(|_| {
                let sub = sub.clone();
                std::thread::spawn(move || Identity::load_or_create(&sub, "race").unwrap().0)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let on_disk = Identity::load_or_create(&sub, "race").unwrap().0;
        for id in &fps {
            assert_eq!(id.fingerprint, on_disk.fingerprint);
        }
        // The key on disk belongs to the certificate on disk.
        let cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![on_disk.cert.clone()], on_disk.key.clone_key());
        assert!(cfg.is_ok(), "key and certificate match");
    }

    #[test]
    fn refuses_garbage_pem() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c.pem");
        let k = dir.path().join("k.pem");
        fs::write(&c, "nope").unwrap();
        fs::write(&k, "nope").unwrap();
        assert!(matches!(
            Identity::from_pem_files(&c, &k),
            Err(IdentityError::Pem { .. })
        ));
        assert!(matches!(
            Identity::from_pem_files(&dir.path().join("missing"), &k),
            Err(IdentityError::Io { .. })
        ));
    }
}
