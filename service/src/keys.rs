//! Encryption keys for backups (age, X25519).
//!
//! Writing needs only the recipients' public keys (`age1…`), so a service can produce backups it
//! cannot read. Reading (restore, verify) needs an identity file with the matching secret key
//! (`AGE-SECRET-KEY-1…`, the format `age-keygen` writes). A stored segment of an encrypted
//! backup is a plain age file: `age -d -i key.txt segment | zstd -d` gives its plaintext.

use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("encryption recipient {0:?} is not an age X25519 public key (age1…)")]
    BadRecipient(String),
    #[error("identity file {path}: {message}")]
    Identity { path: PathBuf, message: String },
    #[error("encryption is requested but no recipients are configured ([encryption] recipients)")]
    NoRecipients,
    #[error("encryption failed: {0}")]
    Encrypt(String),
    /// None of the configured identities opens the object (or none is configured).
    #[error("{0}")]
    Decrypt(String),
}

/// `[encryption]` in the service config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Public keys new encrypted backups are written to.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Files with secret keys, to restore and verify encrypted backups.
    #[serde(default)]
    pub identity_files: Vec<PathBuf>,
}

/// The keys one service instance holds.
pub struct Keys {
    recipients: Vec<String>,
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("recipients", &self.recipients)
            .field("identities", &self.identities.len())
            .finish()
    }
}

impl Keys {
    pub fn load(config: &EncryptionConfig) -> Result<Keys, KeyError> {
        for r in &config.recipients {
            parse_recipient(r)?;
        }
        let mut identities = Vec::new();
        for path in &config.identity_files {
            let err = |message: String| KeyError::Identity {
                path: path.clone(),
                message,
            };
            let file = age::IdentityFile::from_file(path.display().to_string())
                .map_err(|e| err(e.to_string()))?;
            identities.extend(file.into_identities().map_err(|e| err(e.to_string()))?);
        }
        Ok(Keys {
            recipients: config.recipients.clone(),
            identities,
        })
    }

    /// The configured recipients (for a new encrypted backup).
    pub fn recipients(&self) -> Result<Vec<String>, KeyError> {
        if self.recipients.is_empty() {
            Err(KeyError::NoRecipients)
        } else {
            Ok(self.recipients.clone())
        }
    }

    /// Encrypts `plain` to `recipients` as one age file.
    pub fn encrypt(recipients: &[String], plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        use std::io::Write;
        let parsed = recipients
            .iter()
            .map(|r| parse_recipient(r))
            .collect::<Result<Vec<_>, _>>()?;
        let encryptor =
            age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| KeyError::Encrypt(e.to_string()))?;
        let mut out = Vec::with_capacity(plain.len() + plain.len() / 1000 + 256);
        let mut writer = encryptor
            .wrap_output(&mut out)
            .map_err(|e| KeyError::Encrypt(e.to_string()))?;
        writer
            .write_all(plain)
            .map_err(|e| KeyError::Encrypt(e.to_string()))?;
        writer
            .finish()
            .map_err(|e| KeyError::Encrypt(e.to_string()))?;
        Ok(out)
    }

    /// Decrypts one age file with the configured identities. Tampered bytes fail the
    /// authentication and are an error, never garbage.
    pub fn decrypt(&self, cipher: &[u8]) -> Result<Vec<u8>, KeyError> {
        use std::io::Read;
        if self.identities.is_empty() {
            return Err(KeyError::Decrypt("the backup is encrypted and this service has no identity ([encryption] identity_files)".into()));
        }
        let decryptor = age::Decryptor::new_buffered(cipher)
            .map_err(|e| KeyError::Decrypt(format!("not an age file: {e}")))?;
        let mut reader = decryptor
            .decrypt(
                self.identities
                    .iter()
                    .map(|i| i.as_ref() as &dyn age::Identity),
            )
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => KeyError::Decrypt(
                    "none of this service's identities can decrypt it (wrong key)".into(),
                ),
                other => KeyError::Decrypt(format!("cannot decrypt: {other}")),
            })?;
        let mut plain = Vec::with_capacity(cipher.len());
        reader.read_to_end(&mut plain).map_err(|e| {
            KeyError::Decrypt(format!(
                "authentication failed (tampered or truncated): {e}"
            ))
        })?;
        Ok(plain)
    }
}

fn parse_recipient(r: &str) -> Result<age::x25519::Recipient, KeyError> {
    age::x25519::Recipient::from_str(r).map_err(|_| KeyError::BadRecipient(r.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn keypair(dir: &std::path::Path, name: &str) -> (String, PathBuf) {
        let identity = age::x25519::Identity::generate();
        let path = dir.join(name);
        std::fs::write(&path, format!("{}\n", identity.to_string().expose_secret())).unwrap();
        (identity.to_public().to_string(), path)
    }

    #[test]
    fn round_trip_wrong_key_and_tampering_are_told_apart() {
        let dir = tempfile_dir();
        let (public, secret) = keypair(&dir, "right.key");
        let (_, other) = keypair(&dir, "wrong.key");
        let cipher = Keys::encrypt(std::slice::from_ref(&public), b"segment bytes").unwrap();
        let right = Keys::load(&EncryptionConfig {
            recipients: vec![public],
            identity_files: vec![secret],
        })
        .unwrap();
        assert_eq!(right.decrypt(&cipher).unwrap(), b"segment bytes");

        let wrong = Keys::load(&EncryptionConfig {
            recipients: vec![],
            identity_files: vec![other],
        })
        .unwrap();
        assert!(
            wrong
                .decrypt(&cipher)
                .unwrap_err()
                .to_string()
                .contains("wrong key")
        );
        let none = Keys::load(&EncryptionConfig::default()).unwrap();
        assert!(
            none.decrypt(&cipher)
                .unwrap_err()
                .to_string()
                .contains("no identity")
        );
        assert!(matches!(none.recipients(), Err(KeyError::NoRecipients)));

        let mut tampered = cipher.clone();
        let last = tampered.len() - 3;
        tampered[last] ^= 1;
        assert!(
            right
                .decrypt(&tampered)
                .unwrap_err()
                .to_string()
                .contains("tampered")
        );
        assert!(matches!(
            Keys::encrypt(&["age1nope".into()], b"x"),
            Err(KeyError::BadRecipient(_))
        ));
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cim-backup-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
