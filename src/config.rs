//! The platform's flags (decision G10); every flag has an environment twin.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

/// `cargo run --release --example platform -- --help`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "platform",
    about = "SMS platform: every dialect on one port",
    version
)]
pub struct PlatformArgs {
    /// Address to listen on: `HOST:PORT`, where HOST is an IP address
    /// (`[::1]` for IPv6) or a host name such as `localhost`.
    #[arg(long, env = "SMS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: ListenAddr,

    /// Serve `GET /metrics` (Prometheus text format) on this address alone
    /// instead of on --listen, to keep it off the public port.
    #[arg(long, env = "SMS_METRICS_LISTEN")]
    pub metrics_listen: Option<ListenAddr>,

    /// Log format on stderr: `text` (colour only at a terminal) or `json`
    /// (one object per line, RFC 3339 timestamps).
    #[arg(long, env = "SMS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// sled data directory (unused with a PostgreSQL `--store`).
    #[arg(long, env = "SMS_DATA", default_value = "./sms-data")]
    pub data: PathBuf,

    /// The shared store of a deployment of several nodes:
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DB`. Without it, sled in
    /// `--data`. A PostgreSQL node needs `--code-secret-file` (or env
    /// `SMS_CODE_SECRET`), the same on every node.
    #[arg(long, env = "SMS_STORE", hide_env_values = true)]
    pub store: Option<String>,

    /// The PostgreSQL schema the tables live in (created if missing).
    #[arg(long, env = "SMS_STORE_SCHEMA", default_value = "public")]
    pub store_schema: String,

    /// Connections to PostgreSQL per node.
    #[arg(long, env = "SMS_STORE_CONNECTIONS", default_value_t = 16)]
    pub store_connections: u32,

    /// Seconds a node's claim on a send task lasts without a heartbeat: the
    /// wait before a dead node's tasks are taken over.
    #[arg(long, env = "SMS_STORE_CLAIM_SECS", default_value_t = 30)]
    pub store_claim_secs: u32,

    /// Password of the administrator account `root` (created or updated at
    /// start). Without it no root account is set up.
    #[arg(long, env = "SMS_ROOT_PASSWORD", hide_env_values = true)]
    pub root_password: Option<String>,

    /// The code-hashing secret, 64 hex digits. Every node of a deployment
    /// must share one; without it (and without --code-secret-file) a random
    /// one is created in `<data>/code-secret` at first start.
    #[arg(
        long = "code-secret",
        env = "SMS_CODE_SECRET",
        hide_env_values = true,
        hide = true
    )]
    pub code_secret: Option<String>,

    /// A file holding the code-hashing secret (64 hex digits, e.g. from
    /// `openssl rand -hex 32`), shared by every node of a deployment.
    #[arg(long, env = "SMS_CODE_SECRET_FILE")]
    pub code_secret_file: Option<PathBuf>,

    /// Append outgoing messages as JSON lines to this file instead of stdout.
    #[arg(long, env = "SMS_OUTBOX")]
    pub outbox: Option<PathBuf>,

    /// The carriers file (TOML, carriers.md C1): where codes, send tasks and
    /// email go. Without it everything goes to the outbox.
    #[arg(long, env = "SMS_CARRIERS")]
    pub carriers: Option<PathBuf>,

    /// The language of code messages: `zh-CN` (default) or `en-US`.
    #[arg(long, env = "SMS_CODE_LOCALE", default_value = "zh-CN")]
    pub code_locale: String,

    /// DEVELOPMENT ONLY: every issued code is this value.
    #[arg(long, env = "SMS_DEV_CODE")]
    pub dev_code: Option<String>,

    /// A proxy (CIDR or address) whose X-Forwarded-For is believed; repeatable.
    #[arg(
        long = "trusted-proxy",
        env = "SMS_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,

    /// Largest request body in bytes (larger answers 413).
    #[arg(long, env = "SMS_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,

    /// Concurrent connections served at once.
    #[arg(long, env = "SMS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Seconds a client has to send a request's headers.
    #[arg(long, env = "SMS_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds a connection may stay silent (keep-alive idle, stalled body,
    /// silent WebSocket peer) before it is closed.
    #[arg(long, env = "SMS_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Seconds a request body may take to arrive (else 408).
    #[arg(long, env = "SMS_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,

    /// Length of a number lease in seconds (hub `useTimestamp`).
    #[arg(long, env = "SMS_LEASE_SECS", default_value_t = 1200)]
    pub lease_secs: i64,

    /// Seconds after a lease's end at which what its hold still reserves is
    /// released (covers holds orphaned by a crash).
    #[arg(long, env = "SMS_HOLD_GRACE_SECS", default_value_t = 120)]
    pub hold_grace_secs: i64,

    /// Hours unfetched codes, texts for devices and undelivered mailbox
    /// entries are kept.
    #[arg(long, env = "SMS_RETENTION_HOURS", default_value_t = 72,
          value_parser = clap::value_parser!(i64).range(1..=87_600))]
    pub retention_hours: i64,

    /// argon2id memory cost in KiB.
    #[arg(long, env = "SMS_ARGON2_MEMORY_KIB", default_value_t = 19 * 1024)]
    pub argon2_memory_kib: u32,

    /// argon2id passes.
    #[arg(long, env = "SMS_ARGON2_PASSES", default_value_t = 2)]
    pub argon2_passes: u32,

    /// A device token for the pool's device routes (`POST /phones`,
    /// `POST /vcodes`, `GET /sends/<cid>`): `TOKEN`, or `TOKEN=cid1,cid2` to
    /// bind it to those channels; repeatable (env: `;`-separated).
    #[arg(
        long = "device-token",
        env = "SMS_DEVICE_TOKENS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub device_tokens: Vec<String>,

    /// A consumer token for `GET /mobiles/…` and `GET /vcodes/<app>`;
    /// repeatable (env: `;`-separated).
    #[arg(
        long = "consumer-token",
        env = "SMS_CONSUMER_TOKENS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub consumer_tokens: Vec<String>,

    /// A token for `PUT /setsize` (root's HTTP Basic credentials work too);
    /// repeatable (env: `;`-separated).
    #[arg(
        long = "admin-token",
        env = "SMS_ADMIN_TOKENS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub admin_tokens: Vec<String>,

    /// A file of pool tokens, one a line: `device TOKEN[=cid1,cid2]`,
    /// `consumer TOKEN` or `admin TOKEN` (`#` comments).
    #[arg(long, env = "SMS_POOL_TOKEN_FILE")]
    pub pool_token_file: Option<PathBuf>,

    /// IPv6 clients are counted by their network of this many bits for
    /// every per-IP limit (IPv4-mapped addresses count as the IPv4 address).
    #[arg(long, env = "SMS_IPV6_PREFIX_LEN", default_value_t = 64,
          value_parser = clap::value_parser!(u8).range(0..=128))]
    pub ipv6_prefix_len: u8,
}

/// The format of the log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp` (RFC 3339), `level`,
    /// `target`, `message` and the event's fields at the top level.
    Json,
}

/// Where the platform listens: `HOST:PORT`, the host an IP address or a
/// name resolved at start (`localhost:8080`, `0.0.0.0:80`, `[::1]:8080`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr(String);

impl ListenAddr {
    /// The `HOST:PORT` text, as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.parse::<SocketAddr>().is_ok() {
            return Ok(Self(s.to_owned()));
        }
        let bad =
            || format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:8080, localhost:8080, [::1]:8080)");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_ok || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        Self(addr.to_string())
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PlatformArgs {
    /// Defaults for a data directory (tests and embedding).
    pub fn for_data_dir(data: PathBuf) -> Self {
        let mut a = Self::parse_from(["platform"]);
        a.data = data;
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_addresses_and_host_names() {
        for ok in [
            "127.0.0.1:8080",
            "[::1]:0",
            "localhost:8080",
            "sms.example.com:80",
        ] {
            assert_eq!(ok.parse::<ListenAddr>().unwrap().as_str(), ok);
        }
        for bad in [
            "localhost",
            ":80",
            "local host:80",
            "localhost:99999",
            "a/b:1",
            "",
        ] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }
}
