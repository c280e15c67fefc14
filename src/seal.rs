//! Reversible protection for authorised people only: raw `ip` and `device_id` sealed to an X25519
//! public key (libsodium-compatible sealed boxes, from the RustCrypto `crypto_box` crate).
//!
//! The ingester holds a [`Sealer`] (public key only): what it writes it cannot read back, so a
//! stolen ingester, config or database reveals nothing. Whoever holds the private key builds an
//! [`Opener`] for `pii-ingest reveal` and `rekey`. Keys are stored as hex in files; the private key
//! file is written with mode 0600 and never printed.

use std::path::Path;

use crypto_box::aead::OsRng;
use crypto_box::{PublicKey, SecretKey};
use sha2::{Digest, Sha256};

/// Length of a key in bytes.
const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read key file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} does not hold a {KEY_BYTES}-byte hex key")]
    Malformed { path: String },
    #[error("cannot write key file {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the private key {have} does not match the key these values were sealed to ({want})")]
    WrongKey { have: String, want: String },
    #[error("a sealed value is corrupt or was not sealed to this key")]
    Corrupt,
}

/// The id of a public key: a fingerprint, safe to store and print.
pub fn key_id(public: &PublicKey) -> String {
    format!("x25519-{}", &hex::encode(Sha256::digest(public.as_bytes()))[..12])
}

/// Seals values to a public key.
#[derive(Clone)]
pub struct Sealer {
    public: PublicKey,
    key_id: String,
}

impl Sealer {
    pub fn new(public: PublicKey) -> Self {
        let key_id = key_id(&public);
        Sealer { public, key_id }
    }

    /// Reads a public key file written by `pii-ingest keygen`.
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        Ok(Self::new(PublicKey::from(read_key(path)?)))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// A fresh sealed box of `value` (a new ephemeral key each time, so equal values give different
    /// ciphertexts: the HMAC tokens, not these, are for joining).
    pub fn seal(&self, value: &str) -> Vec<u8> {
        // Sealing only fails if the AEAD refuses the input length, which a text value never reaches.
        self.seal_bytes(value.as_bytes())
    }

    /// A fresh sealed box of raw bytes (a quarantined body, which need not be text).
    pub fn seal_bytes(&self, value: &[u8]) -> Vec<u8> {
        // Sealing only fails if the AEAD refuses the input length (far above SQS's 1 MiB bodies).
        self.public.seal(&mut OsRng, value).expect("sealing a message body cannot fail")
    }
}

/// Opens sealed values with the private key.
pub struct Opener {
    secret: SecretKey,
    key_id: String,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener").field("secret", &"[redacted]").field("key_id", &self.key_id).finish()
    }
}

impl Opener {
    pub fn new(secret: SecretKey) -> Self {
        let key_id = key_id(&secret.public_key());
        Opener { secret, key_id }
    }

    /// Reads a private key file written by `pii-ingest keygen`.
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        Ok(Self::new(SecretKey::from(read_key(path)?)))
    }

    /// The id of the matching public key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Opens a value sealed to `sealed_key_id`; refuses at once if that is not this key.
    pub fn open(&self, sealed: &[u8], sealed_key_id: &str) -> Result<String, SealError> {
        String::from_utf8(self.open_bytes(sealed, sealed_key_id)?).map_err(|_| SealError::Corrupt)
    }

    /// Opens raw bytes sealed to `sealed_key_id` (a quarantined body).
    pub fn open_bytes(&self, sealed: &[u8], sealed_key_id: &str) -> Result<Vec<u8>, SealError> {
        if sealed_key_id != self.key_id {
            return Err(SealError::WrongKey { have: self.key_id.clone(), want: sealed_key_id.to_owned() });
        }
        self.secret.unseal(sealed).map_err(|_| SealError::Corrupt)
    }
}

/// Writes a new key pair: `<dir>/seal.pub` (shareable) and `<dir>/seal.key` (mode 0600, for the few
/// people allowed to reveal). Refuses to overwrite an existing private key. Returns the key id.
pub fn keygen(dir: &Path) -> Result<String, SealError> {
    let secret = SecretKey::generate(&mut OsRng);
    let public = secret.public_key();
    let private_path = dir.join("seal.key");
    let write_error = |path: &Path| {
        let path = path.display().to_string();
        move |source| SealError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&private_path)
            .map_err(write_error(&private_path))?;
        writeln!(file, "{}", hex::encode(secret.to_bytes())).map_err(write_error(&private_path))?;
    }
    let public_path = dir.join("seal.pub");
    std::fs::write(&public_path, format!("{}\n", hex::encode(public.as_bytes()))).map_err(write_error(&public_path))?;
    Ok(key_id(&public))
}

fn read_key(path: &Path) -> Result<[u8; KEY_BYTES], SealError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SealError::Read { path: shown.clone(), source })?;
    let bytes = hex::decode(text.trim()).map_err(|_| SealError::Malformed { path: shown.clone() })?;
    bytes.try_into().map_err(|_| SealError::Malformed { path: shown })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (tempfile::TempDir, Sealer, Opener) {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path()).unwrap();
        let sealer = Sealer::from_file(&dir.path().join("seal.pub")).unwrap();
        let opener = Opener::from_file(&dir.path().join("seal.key")).unwrap();
        (dir, sealer, opener)
    }

    #[test]
    fn every_field_round_trips() {
        let (_dir, sealer, opener) = pair();
        assert_eq!(sealer.key_id(), opener.key_id());
        for value in ["199.172.111.135", "2001:db8::1", "593-47-5928", "Zoë 🙂"] {
            let sealed = sealer.seal(value);
            assert!(!sealed.windows(value.len()).any(|w| w == value.as_bytes()));
            assert_eq!(opener.open(&sealed, sealer.key_id()).unwrap(), value);
        }
        assert_ne!(sealer.seal("x"), sealer.seal("x"), "a fresh ephemeral key each time");
        let body = b"\xff not even UTF-8 {\"ip\":\"1.2.3.4\"}";
        assert_eq!(opener.open_bytes(&sealer.seal_bytes(body), sealer.key_id()).unwrap(), body);
    }

    #[test]
    fn the_wrong_private_key_fails_clearly() {
        let (_a, sealer, _) = pair();
        let (_b, _, other) = pair();
        let sealed = sealer.seal("1.2.3.4");
        let error = other.open(&sealed, sealer.key_id()).unwrap_err();
        assert!(matches!(error, SealError::WrongKey { .. }), "{error}");
        assert!(error.to_string().contains(sealer.key_id()));
        // Even when told the key id matches, the box does not open.
        assert!(matches!(other.open(&sealed, other.key_id()), Err(SealError::Corrupt)));
    }

    #[test]
    fn the_private_key_file_is_0600_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _, opener) = pair();
        let mode = std::fs::metadata(dir.path().join("seal.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(keygen(dir.path()).is_err());
        let secret_hex = std::fs::read_to_string(dir.path().join("seal.key")).unwrap();
        assert!(!format!("{opener:?}").contains(secret_hex.trim()));
    }
}
