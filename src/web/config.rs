//! `antibody-web`'s configuration (`/etc/antibody/web.toml`) and the
//! secrets it names. Parsing is pure; [`Secrets::load`] is the one place
//! that reads the secret files, so a missing or unreadable secret stops the
//! bridge at start-up instead of leaving a door open.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_WEB_CONFIG_PATH: &str = "/etc/antibody/web.toml";

/// Shorter HMAC keys are guessable offline from one captured token.
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// A sentinel token is a bearer secret too: refuse a trivially short one.
pub const MIN_SENTINEL_BYTES: usize = 16;

/// Upper bounds of the range-checked keys (see [`WebConfig::parse`]).
pub const MAX_AUTH_FAILURE_WINDOW_SECS: u64 = 86_400;
pub const MAX_JWT_LEEWAY_SECS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Where to listen when systemd passes no socket.
    pub listen: SocketAddr,
    /// The NEXUS sentinel's bearer token (may only ingest alerts).
    pub sentinel_token_file: PathBuf,
    /// The HS256 key operators' JWTs are signed with.
    pub jwt_secret_file: PathBuf,
    /// When set, JWTs are EdDSA-signed and checked with this public key
    /// (PEM) instead; the HS256 secret is then not read.
    pub jwt_public_key_file: Option<PathBuf>,
    /// When set, a JWT's `iss` must equal it.
    pub jwt_issuer: Option<String>,
    /// When set, a JWT's `aud` must contain it.
    pub jwt_audience: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub jwt_leeway_secs: u64,
    /// Authentication failures one peer may have within the window before
    /// its requests are refused with 429.
    pub auth_failures_max: u32,
    pub auth_failure_window_secs: u64,
    /// Messages one WebSocket client may have waiting; past that it is dropped.
    pub ws_client_buffer: usize,
    /// How long one call to the agent may take before the bridge answers 503.
    pub agent_timeout_secs: u64,
    /// Proxies (addresses or CIDR prefixes) whose `X-Forwarded-For` names
    /// the client, for the slow-down and the journal; empty: none.
    pub trusted_proxies: Vec<String>,
    /// A request's headers must arrive within this (slow clients are cut off).
    pub header_read_timeout_secs: u64,
    /// HTTP connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Event streams (WebSockets) open at once; they leave the HTTP
    /// connection count once upgraded, so they have their own cap. Past it
    /// a new stream gets 503.
    pub max_event_clients: usize,
    /// A request body must have arrived within this (a client that sends
    /// its body slowly is answered 408).
    pub body_read_timeout_secs: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8470)),
            sentinel_token_file: PathBuf::from("/etc/antibody/sentinel.token"),
            jwt_secret_file: PathBuf::from("/etc/antibody/jwt.secret"),
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 30,
            auth_failures_max: 10,
            auth_failure_window_secs: 60,
            ws_client_buffer: 256,
            agent_timeout_secs: 10,
            trusted_proxies: Vec::new(),
            header_read_timeout_secs: 10,
            max_connections: 1024,
            max_event_clients: 256,
            body_read_timeout_secs: 30,
        }
    }
}

impl WebConfig {
    /// Parses the TOML text; unknown keys are refused (a typo must not
    /// silently fall back to a default).
    pub fn parse(text: &str) -> Result<WebConfig, String> {
        let config: WebConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.auth_failures_max == 0 {
            return Err("auth_failures_max must be at least 1".into());
        }
        // The window is added to an Instant: a huge one would overflow and
        // panic on the first failure. A day is far past any sensible use.
        if config.auth_failure_window_secs == 0
            || config.auth_failure_window_secs > MAX_AUTH_FAILURE_WINDOW_SECS
        {
            return Err(format!(
                "auth_failure_window_secs must be between 1 and {MAX_AUTH_FAILURE_WINDOW_SECS}"
            ));
        }
        // Leeway lets an expired token in for that long: minutes at most.
        if config.jwt_leeway_secs > MAX_JWT_LEEWAY_SECS {
            return Err(format!(
                "jwt_leeway_secs must be at most {MAX_JWT_LEEWAY_SECS}"
            ));
        }
        if config.ws_client_buffer == 0 {
            return Err("ws_client_buffer must be at least 1".into());
        }
        if config.agent_timeout_secs == 0 {
            return Err("agent_timeout_secs must be at least 1".into());
        }
        super::peer::parse_trusted(&config.trusted_proxies)?;
        if config.header_read_timeout_secs == 0 || config.max_connections == 0 {
            return Err("header_read_timeout_secs and max_connections must be at least 1".into());
        }
        if config.max_event_clients == 0 {
            return Err("max_event_clients must be at least 1".into());
        }
        if config.body_read_timeout_secs == 0 || config.body_read_timeout_secs > 3600 {
            return Err("body_read_timeout_secs must be between 1 and 3600".into());
        }
        Ok(config)
    }

    /// Reads and parses `path`. A missing file is fine only at the default
    /// path (every key has a default; the secrets are checked separately).
    pub fn load(path: &Path, missing_ok: bool) -> Result<WebConfig, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => WebConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(WebConfig::default())
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

/// How operators' JWTs are checked: the algorithm is fixed here, never by
/// the token.
#[derive(Clone)]
pub enum JwtKey {
    Hs256(Vec<u8>),
    /// PEM text of an Ed25519 public key.
    EdDsaPem(Vec<u8>),
}

impl std::fmt::Debug for JwtKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Hs256(_) => f.write_str("JwtKey::Hs256(…)"),
            JwtKey::EdDsaPem(_) => f.write_str("JwtKey::EdDsaPem(…)"),
        }
    }
}

/// The secrets the config names, read once at start-up.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub sentinel_token: Vec<u8>,
    pub jwt_key: JwtKey,
}

impl Secrets {
    pub fn load(config: &WebConfig) -> Result<Secrets, String> {
        let sentinel_token = read_secret(
            &config.sentinel_token_file,
            "sentinel_token_file",
            Kind::Secret,
        )?;
        if sentinel_token.len() < MIN_SENTINEL_BYTES {
            return Err(format!(
                "sentinel_token_file {}: the token is {} bytes; at least {MIN_SENTINEL_BYTES} are required",
                config.sentinel_token_file.display(),
                sentinel_token.len()
            ));
        }
        let jwt_key = match &config.jwt_public_key_file {
            Some(path) => {
                let pem = read_secret(path, "jwt_public_key_file", Kind::Public)?;
                // Parse now so a bad key fails the start, not every request.
                jsonwebtoken::DecodingKey::from_ed_pem(&pem).map_err(|e| {
                    format!(
                        "jwt_public_key_file {}: not an Ed25519 public key in PEM: {e}",
                        path.display()
                    )
                })?;
                JwtKey::EdDsaPem(pem)
            }
            None => {
                let secret = read_secret(&config.jwt_secret_file, "jwt_secret_file", Kind::Secret)?;
                if secret.len() < MIN_HS256_SECRET_BYTES {
                    return Err(format!(
                        "jwt_secret_file {}: the key is {} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES}",
                        config.jwt_secret_file.display(),
                        secret.len()
                    ));
                }
                JwtKey::Hs256(secret)
            }
        };
        Ok(Secrets {
            sentinel_token,
            jwt_key,
        })
    }
}

/// Whether a file is a secret (refused when other users can reach it) or
/// only key material that may be public (the EdDSA public key).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Secret,
    Public,
}

/// The file's bytes without trailing whitespace (`echo secret > file`
/// leaves a newline that is not part of the secret). A secret that other
/// users may read (or write) is refused, not warned about: a warning in a
/// journal nobody reads leaves every local user able to mint admin JWTs
/// or post as the sentinel. The mode is read from the opened file, so it
/// is the file that is then read.
fn read_secret(path: &Path, key: &str, kind: Kind) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let cannot = |e: std::io::Error| format!("{key} {}: cannot read it: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let mode = file.metadata().map_err(cannot)?.permissions().mode();
    if kind == Kind::Secret && mode & 0o007 != 0 {
        return Err(format!(
            "{key} {}: mode {:04o} lets every user reach this secret; chmod o-rwx it (e.g. 0640, group antibody-web)",
            path.display(),
            mode & 0o7777
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(cannot)?;
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{key} {}: the file is empty", path.display()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_every_default() {
        assert_eq!(WebConfig::parse("").unwrap(), WebConfig::default());
        assert_eq!(
            WebConfig::default().listen.to_string(),
            "127.0.0.1:8470",
            "the issue's default"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = WebConfig::parse("lisen = \"0.0.0.0:1\"").unwrap_err();
        assert!(e.contains("lisen"), "{e}");
        let e = WebConfig::parse("listen = \"not an address\"").unwrap_err();
        assert!(e.contains("listen"), "{e}");
        assert!(WebConfig::parse("auth_failures_max = 0").is_err());
    }

    #[test]
    fn windows_and_leeway_are_range_checked_by_name() {
        for bad in [
            "auth_failure_window_secs = 0",
            "auth_failure_window_secs = 86401",
            "auth_failure_window_secs = 18446744073709551615",
        ] {
            let e = WebConfig::parse(bad).unwrap_err();
            assert!(e.contains("auth_failure_window_secs"), "{bad}: {e}");
        }
        assert!(WebConfig::parse("auth_failure_window_secs = 86400").is_ok());
        let e = WebConfig::parse("jwt_leeway_secs = 301").unwrap_err();
        assert!(e.contains("jwt_leeway_secs"), "{e}");
        assert!(WebConfig::parse("jwt_leeway_secs = 300").is_ok());
        assert!(WebConfig::parse("jwt_leeway_secs = 0").is_ok());
        for bad in [
            "body_read_timeout_secs = 0",
            "body_read_timeout_secs = 3601",
        ] {
            let e = WebConfig::parse(bad).unwrap_err();
            assert!(e.contains("body_read_timeout_secs"), "{bad}: {e}");
        }
        let e = WebConfig::parse("max_event_clients = 0").unwrap_err();
        assert!(e.contains("max_event_clients"), "{e}");
    }

    /// Writes a file only its owner and group may read.
    fn write_private(path: &Path, bytes: impl AsRef<[u8]>) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640)).unwrap();
    }

    #[test]
    fn secrets_others_may_reach_stop_the_start_a_public_key_does_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut config = WebConfig {
            sentinel_token_file: dir.path().join("sentinel"),
            jwt_secret_file: dir.path().join("jwt"),
            ..WebConfig::default()
        };
        write_private(&config.sentinel_token_file, "0123456789abcdef0123\n");
        write_private(&config.jwt_secret_file, [b'k'; 40]);
        assert!(Secrets::load(&config).is_ok());
        for (file, key, mode) in [
            (&config.sentinel_token_file, "sentinel_token_file", 0o644),
            (&config.jwt_secret_file, "jwt_secret_file", 0o602),
            (&config.jwt_secret_file, "jwt_secret_file", 0o641),
        ] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Secrets::load(&config).unwrap_err();
            assert!(
                e.contains(key)
                    && e.contains(&file.display().to_string())
                    && e.contains(&format!("mode {mode:04o}")),
                "{e}"
            );
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o640)).unwrap();
        }
        // A public key may be world-readable; the HS256 file is then unused.
        let public = dir.path().join("pub.pem");
        std::fs::write(
            &public,
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAgH13k4peH5vokpfIssfVlktw7zPgCvbFemoPRpLbCK4=\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(
            &config.jwt_secret_file,
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        config.jwt_public_key_file = Some(public);
        assert!(Secrets::load(&config).is_ok());
    }

    #[test]
    fn secrets_are_required_trimmed_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = WebConfig {
            sentinel_token_file: dir.path().join("sentinel"),
            jwt_secret_file: dir.path().join("jwt"),
            ..WebConfig::default()
        };
        let e = Secrets::load(&config).unwrap_err();
        assert!(
            e.contains("sentinel_token_file") && e.contains("cannot read"),
            "{e}"
        );

        write_private(&dir.path().join("sentinel"), "short\n");
        let e = Secrets::load(&config).unwrap_err();
        assert!(e.contains("at least 16"), "{e}");

        write_private(&dir.path().join("sentinel"), "0123456789abcdef0123\n");
        let e = Secrets::load(&config).unwrap_err();
        assert!(e.contains("jwt_secret_file"), "{e}");
        write_private(&dir.path().join("jwt"), "too short");
        let e = Secrets::load(&config).unwrap_err();
        assert!(e.contains("at least 32"), "{e}");

        write_private(&dir.path().join("jwt"), [b'k'; 40]);
        let secrets = Secrets::load(&config).unwrap();
        assert_eq!(secrets.sentinel_token, b"0123456789abcdef0123");
        assert!(matches!(secrets.jwt_key, JwtKey::Hs256(ref k) if k.len() == 40));

        config.jwt_public_key_file = Some(dir.path().join("pub.pem"));
        std::fs::write(dir.path().join("pub.pem"), "not a key").unwrap();
        let e = Secrets::load(&config).unwrap_err();
        assert!(e.contains("Ed25519"), "{e}");
        // With a real public key, the HS256 file is not read (nor needed).
        std::fs::write(
            dir.path().join("pub.pem"),
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAgH13k4peH5vokpfIssfVlktw7zPgCvbFemoPRpLbCK4=\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        std::fs::remove_file(dir.path().join("jwt")).unwrap();
        let secrets = Secrets::load(&config).unwrap();
        assert!(matches!(secrets.jwt_key, JwtKey::EdDsaPem(_)));
    }
}
