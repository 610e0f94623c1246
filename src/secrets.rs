//! Loading the code-hashing secret (public: embedders load theirs the same
//! way). Codes are stored only as HMACs under this secret, so it must stay
//! the same across restarts and be shared by every node of a deployment.

use std::path::{Path, PathBuf};

use sms_core::random::RandomSource;
use sms_core::secret::parse_code_secret;

/// Where a code secret comes from, in the order [`load_code_secret`] tries.
#[derive(Debug, Clone, Default)]
pub struct SecretSources {
    /// The secret itself, 64 hex digits (env `SMS_CODE_SECRET`).
    pub value: Option<String>,
    /// A file holding it (`--code-secret-file`); it must exist.
    pub file: Option<PathBuf>,
    /// A file created with a fresh random secret at first start and read
    /// afterwards (the platform's `<data>/code-secret`), for one node.
    pub generated_file: Option<PathBuf>,
}

/// Why no code secret could be loaded. Messages name the source, never the
/// secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The value or a file's content is not 64 hex digits.
    #[error("the code secret from {source_name} is malformed: {reason}")]
    Malformed {
        /// `SMS_CODE_SECRET` or the file's path.
        source_name: String,
        /// What is wrong.
        reason: sms_core::secret::SecretFormatError,
    },
    /// A file could not be read or written.
    #[error("cannot use the code secret file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// No source was given.
    #[error("no code secret: set SMS_CODE_SECRET (64 hex digits) or --code-secret-file")]
    Missing,
}

/// Loads the code secret from the first source given: the value, then the
/// file, then the generated file (created 0600 with a random secret from
/// `rng` when absent, written atomically and synced).
pub fn load_code_secret(
    sources: &SecretSources,
    rng: &dyn RandomSource,
) -> Result<[u8; 32], SecretError> {
    if let Some(v) = &sources.value {
        return parse_code_secret(v).map_err(|reason| SecretError::Malformed {
            source_name: "SMS_CODE_SECRET".into(),
            reason,
        });
    }
    if let Some(path) = &sources.file {
        return read(path);
    }
    let Some(path) = &sources.generated_file else {
        return Err(SecretError::Missing);
    };
    if path.exists() {
        return read(path);
    }
    let io = |source| SecretError::Io {
        path: path.clone(),
        source,
    };
    let mut key = [0u8; 32];
    rng.fill(&mut key);
    let tmp = path.with_extension("tmp");
    write_private(&tmp, &hex::encode(key)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(key)
}

fn read(path: &Path) -> Result<[u8; 32], SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_code_secret(&text).map_err(|reason| SecretError::Malformed {
        source_name: path.display().to_string(),
        reason,
    })
}

/// Writes `text` to a new file readable by its owner only, and syncs it.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sms_core::random::SeededRandom;

    #[test]
    fn sources_are_tried_in_order_and_the_generated_one_persists() {
        let dir = tempfile::tempdir().unwrap();
        let rng = SeededRandom::new(1);
        let generated = dir.path().join("code-secret");
        let sources = SecretSources {
            generated_file: Some(generated.clone()),
            ..Default::default()
        };
        let first = load_code_secret(&sources, &rng).unwrap();
        assert_eq!(load_code_secret(&sources, &rng).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&generated).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let file = dir.path().join("shared");
        std::fs::write(&file, "11".repeat(32)).unwrap();
        let with_file = SecretSources {
            file: Some(file.clone()),
            ..sources.clone()
        };
        assert_eq!(load_code_secret(&with_file, &rng).unwrap(), [0x11; 32]);
        let with_value = SecretSources {
            value: Some("22".repeat(32)),
            ..with_file
        };
        assert_eq!(load_code_secret(&with_value, &rng).unwrap(), [0x22; 32]);
    }

    #[test]
    fn errors_name_the_source_never_the_secret() {
        let rng = SeededRandom::new(1);
        let bad = SecretSources {
            value: Some("not-a-secret-value".into()),
            ..Default::default()
        };
        let text = load_code_secret(&bad, &rng).unwrap_err().to_string();
        assert!(text.contains("SMS_CODE_SECRET"), "{text}");
        assert!(!text.contains("not-a-secret-value"), "{text}");
        let missing = SecretSources {
            file: Some("/nonexistent/secret".into()),
            ..Default::default()
        };
        let text = load_code_secret(&missing, &rng).unwrap_err().to_string();
        assert!(text.contains("/nonexistent/secret"), "{text}");
        assert!(matches!(
            load_code_secret(&SecretSources::default(), &rng),
            Err(SecretError::Missing)
        ));
    }
}
