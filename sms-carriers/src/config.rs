//! The `--carriers` file (`docs/contract/carriers.md` C1): one `[[carrier]]` table per
//! carrier and a `[routes]` table. Parsed key by key so that every error
//! names its line and key and never echoes a value (a value may be a
//! secret); secrets are [`Secret`]s, redacted in `Debug`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// A configured secret: redacted in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A bad `--carriers` file. The message names the line and the key; it
/// never contains a value from the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("carriers file, line {line}: `{key}`: {problem}")]
pub struct ConfigError {
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// The key, dotted (`carrier[2].port`, `routes.codes`).
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq)]
pub struct CarriersConfig {
    /// Carriers in file order.
    pub carriers: Vec<CarrierConfig>,
    /// Routes per purpose.
    pub routes: Routes,
}

/// One `[[carrier]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CarrierConfig {
    /// `[a-z0-9_-]{1,32}`: in logs, receipts and callback URLs.
    pub name: String,
    /// The kind's settings.
    pub settings: CarrierSettings,
    /// Retries, rate limit and breaker (keys common to every kind).
    pub delivery: crate::resilient::DeliveryPolicy,
}

/// The settings of each kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarrierSettings {
    /// `kind = "aliyun"`.
    Aliyun(AliyunConfig),
    /// `kind = "tencent"`.
    Tencent(TencentConfig),
    /// `kind = "twilio"`.
    Twilio(TwilioConfig),
    /// `kind = "smpp"`.
    Smpp(SmppConfig),
    /// `kind = "smtp"`.
    Smtp(SmtpConfig),
    /// `kind = "outbox"`.
    Outbox(OutboxConfig),
}

impl CarrierSettings {
    /// The `kind` value.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Aliyun(_) => "aliyun",
            Self::Tencent(_) => "tencent",
            Self::Twilio(_) => "twilio",
            Self::Smpp(_) => "smpp",
            Self::Smtp(_) => "smtp",
            Self::Outbox(_) => "outbox",
        }
    }
}

/// Aliyun's signature version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliyunSignature {
    /// RPC, HMAC-SHA1 (the default).
    Rpc,
    /// V3, `ACS3-HMAC-SHA256`.
    V3,
}

/// What the template providers (Aliyun, Tencent) share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSettings {
    /// `SignName` of codes.
    pub sign_name: String,
    /// The provider template of codes (its one parameter: the code).
    pub code_template: String,
    /// sendapi `temp_id` → provider template.
    pub task_templates: BTreeMap<String, String>,
    /// `?token=` of receipts.
    pub callback_token: Option<Secret>,
    /// Whole-request timeout, seconds (10).
    pub timeout_secs: u64,
}

/// `kind = "aliyun"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliyunConfig {
    /// API base (`https://dysmsapi.aliyuncs.com/`).
    pub endpoint: String,
    /// AccessKey id.
    pub access_key_id: String,
    /// AccessKey secret.
    pub access_key_secret: Secret,
    /// RPC or V3.
    pub signature: AliyunSignature,
    /// Sign name, templates, receipts token, timeout.
    pub templates: TemplateSettings,
}

/// `kind = "tencent"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TencentConfig {
    /// API base (`https://sms.tencentcloudapi.com/`).
    pub endpoint: String,
    /// SecretId.
    pub secret_id: String,
    /// SecretKey.
    pub secret_key: Secret,
    /// `X-TC-Region`.
    pub region: String,
    /// `SmsSdkAppId`.
    pub sdk_app_id: String,
    /// Sign name, templates, receipts token, timeout.
    pub templates: TemplateSettings,
}

/// The sender of a Twilio message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioFrom {
    /// `from`: a number.
    Number(String),
    /// `messaging_service_sid`.
    MessagingService(String),
}

/// `kind = "twilio"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioConfig {
    /// API base (`https://api.twilio.com/`).
    pub endpoint: String,
    /// Account SID.
    pub account_sid: String,
    /// Auth token (Basic auth password, callback signatures).
    pub auth_token: Secret,
    /// Sender.
    pub from: TwilioFrom,
    /// This platform as Twilio reaches it.
    pub public_url: String,
    /// Whole-request timeout, seconds (10).
    pub timeout_secs: u64,
}

/// `kind = "smpp"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmppConfig {
    /// SMSC host.
    pub host: String,
    /// SMSC port (2775).
    pub port: u16,
    /// At most 15 characters.
    pub system_id: String,
    /// At most 8 characters.
    pub password: Secret,
    /// Optional system type.
    pub system_type: String,
    /// Source address.
    pub source_addr: String,
    /// `submit_sm` awaiting their response at once (10).
    pub window: usize,
    /// Seconds between `enquire_link`s (30).
    pub enquire_link_secs: u64,
    /// Seconds to wait for a response (10).
    pub response_timeout_secs: u64,
    /// First reconnect delay, seconds (1); doubles up to 60.
    pub reconnect_secs: u64,
}

/// SMTP transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS on a plain connection (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a loopback host.
    None,
}

/// `kind = "smtp"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Relay host.
    pub host: String,
    /// Relay port (587, 465 for `tls`).
    pub port: u16,
    /// Security.
    pub tls: SmtpTls,
    /// Login, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<Secret>,
    /// `From:` mailbox.
    pub from: String,
    /// Timeout, seconds (10).
    pub timeout_secs: u64,
}

/// `kind = "outbox"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// A file, or stdout without one.
    pub path: Option<String>,
}

/// Routes: carrier names tried in order, per purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// SMS verification codes.
    pub codes: Option<Vec<String>>,
    /// sendapi send tasks.
    pub tasks: Option<Vec<String>>,
    /// Email codes.
    pub email: Option<Vec<String>>,
    /// Longest prefix wins.
    pub prefix: Vec<PrefixRoute>,
}

/// `[[routes.prefix]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixRoute {
    /// Digits the recipient starts with (`86170`).
    pub prefix: String,
    /// Codes to such numbers.
    pub codes: Option<Vec<String>>,
    /// Tasks to such numbers.
    pub tasks: Option<Vec<String>>,
}

impl Routes {
    /// The route of codes (`email == false`) or tasks to `to` (digits,
    /// with or without `+`): the longest matching prefix route that names
    /// the purpose, else the purpose's route. `None`: the outbox.
    pub fn for_sms(&self, to: &str, tasks: bool) -> Option<&[String]> {
        let digits = to.trim_start_matches('+');
        let best = self
            .prefix
            .iter()
            .filter(|p| {
                digits.starts_with(&p.prefix)
                    || (digits.len() == 11 && format!("86{digits}").starts_with(&p.prefix))
            })
            .filter_map(|p| {
                let r = if tasks { &p.tasks } else { &p.codes };
                r.as_ref().map(|r| (p.prefix.len(), r))
            })
            .max_by_key(|(len, _)| *len);
        match best {
            Some((_, r)) => Some(r),
            None => if tasks { &self.tasks } else { &self.codes }.as_deref(),
        }
    }
}

/// Parses and checks a `--carriers` file.
pub fn parse(src: &str) -> Result<CarriersConfig, ConfigError> {
    let doc: toml::Table = toml::from_str(src).map_err(|e| ConfigError {
        line: e.span().map(|s| line_of(src, s.start)).unwrap_or(0),
        key: "(syntax)".into(),
        problem: sanitize(e.message()),
    })?;
    let locator = Locator { src };
    let mut carriers = Vec::new();
    let mut names = HashSet::new();
    for (top, _) in doc.iter() {
        if top != "carrier" && top != "routes" {
            return Err(locator.err_top(top, "unknown key"));
        }
    }
    if let Some(list) = doc.get("carrier") {
        let Some(list) = list.as_array() else {
            return Err(locator.err_top("carrier", "must be [[carrier]] tables"));
        };
        for (i, v) in list.iter().enumerate() {
            let Some(t) = v.as_table() else {
                return Err(locator.err_top("carrier", "must be [[carrier]] tables"));
            };
            let f = Fields {
                table: t,
                index: i,
                locator: &locator,
                used: Default::default(),
            };
            let c = parse_carrier(&f)?;
            if !names.insert(c.name.clone()) {
                return Err(f.err("name", "a carrier of this name comes earlier"));
            }
            carriers.push(c);
        }
    }
    let routes = match doc.get("routes") {
        None => Routes::default(),
        Some(v) => parse_routes(v, &locator, &names)?,
    };
    Ok(CarriersConfig { carriers, routes })
}

fn parse_carrier(f: &Fields<'_>) -> Result<CarrierConfig, ConfigError> {
    let name = f.req_str("name")?;
    let valid = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid {
        return Err(f.err("name", "must match [a-z0-9_-]{1,32}"));
    }
    let kind = f.req_str("kind")?;
    let settings = match kind.as_str() {
        "aliyun" => CarrierSettings::Aliyun(AliyunConfig {
            endpoint: f.endpoint("https://dysmsapi.aliyuncs.com/")?,
            access_key_id: f.req_str("access_key_id")?,
            access_key_secret: f.req_secret("access_key_secret")?,
            signature: match f.opt_str("signature")?.as_deref() {
                None | Some("rpc") => AliyunSignature::Rpc,
                Some("v3") => AliyunSignature::V3,
                Some(_) => return Err(f.err("signature", "must be \"rpc\" or \"v3\"")),
            },
            templates: f.template_settings()?,
        }),
        "tencent" => CarrierSettings::Tencent(TencentConfig {
            endpoint: f.endpoint("https://sms.tencentcloudapi.com/")?,
            secret_id: f.req_str("secret_id")?,
            secret_key: f.req_secret("secret_key")?,
            region: f.req_str("region")?,
            sdk_app_id: f.req_str("sdk_app_id")?,
            templates: f.template_settings()?,
        }),
        "twilio" => {
            let from = match (f.opt_str("from")?, f.opt_str("messaging_service_sid")?) {
                (Some(n), None) => TwilioFrom::Number(n),
                (None, Some(s)) => TwilioFrom::MessagingService(s),
                _ => {
                    return Err(f.err(
                        "from",
                        "give exactly one of `from` and `messaging_service_sid`",
                    ))
                }
            };
            let public_url = f.req_str("public_url")?;
            if !(public_url.starts_with("https://") || public_url.starts_with("http://")) {
                return Err(f.err("public_url", "must be an http(s) URL"));
            }
            CarrierSettings::Twilio(TwilioConfig {
                endpoint: f.endpoint("https://api.twilio.com/")?,
                account_sid: f.req_str("account_sid")?,
                auth_token: f.req_secret("auth_token")?,
                from,
                public_url: public_url.trim_end_matches('/').to_string(),
                timeout_secs: f.opt_u64("timeout_secs", 10)?,
            })
        }
        "smpp" => {
            let system_id = f.req_str("system_id")?;
            if system_id.len() > 15 {
                return Err(f.err("system_id", "at most 15 characters (SMPP 3.4)"));
            }
            let password = f.req_secret("password")?;
            if password.expose().len() > 8 {
                return Err(f.err("password", "at most 8 characters (SMPP 3.4)"));
            }
            let window = f.opt_u64("window", 10)?;
            if window == 0 || window > 1000 {
                return Err(f.err("window", "must be 1..=1000"));
            }
            CarrierSettings::Smpp(SmppConfig {
                host: f.req_str("host")?,
                port: f.opt_port("port", 2775)?,
                system_id,
                password,
                system_type: f.opt_str("system_type")?.unwrap_or_default(),
                source_addr: f.req_str("source_addr")?,
                window: window as usize,
                enquire_link_secs: f.opt_u64("enquire_link_secs", 30)?.max(1),
                response_timeout_secs: f.opt_u64("response_timeout_secs", 10)?.max(1),
                reconnect_secs: f.opt_u64("reconnect_secs", 1)?.max(1),
            })
        }
        "smtp" => {
            let tls = match f.opt_str("tls")?.as_deref() {
                None | Some("starttls") => SmtpTls::StartTls,
                Some("tls") => SmtpTls::Tls,
                Some("none") => SmtpTls::None,
                Some(_) => return Err(f.err("tls", "must be \"starttls\", \"tls\" or \"none\"")),
            };
            let host = f.req_str("host")?;
            if tls == SmtpTls::None && !is_loopback(&host) {
                return Err(f.err("tls", "\"none\" only for a loopback host"));
            }
            let username = f.opt_str("username")?;
            let password = f.opt_secret("password")?;
            if username.is_some() != password.is_some() {
                return Err(f.err(
                    "password",
                    "give both `username` and `password`, or neither",
                ));
            }
            CarrierSettings::Smtp(SmtpConfig {
                host,
                port: f.opt_port("port", if tls == SmtpTls::Tls { 465 } else { 587 })?,
                tls,
                username,
                password,
                from: f.req_str("from")?,
                timeout_secs: f.opt_u64("timeout_secs", 10)?,
            })
        }
        "outbox" => CarrierSettings::Outbox(OutboxConfig {
            path: f.opt_str("path")?,
        }),
        _ => {
            return Err(f.err(
                "kind",
                "unknown kind (aliyun | tencent | twilio | smpp | smtp | outbox)",
            ))
        }
    };
    let d = crate::resilient::DeliveryPolicy::default();
    let delivery = crate::resilient::DeliveryPolicy {
        retries: f.opt_u64("retries", u64::from(d.retries))?.min(10) as u32,
        backoff_ms: f.opt_u64("backoff_ms", d.backoff_ms)?,
        rate_per_sec: f.opt_f64("rate_per_sec", d.rate_per_sec)?,
        breaker_failures: f
            .opt_u64("breaker_failures", u64::from(d.breaker_failures))?
            .clamp(1, 1000) as u32,
        breaker_open_secs: f
            .opt_u64("breaker_open_secs", d.breaker_open_secs as u64)?
            .clamp(1, 86_400) as i64,
    };
    f.finish()?;
    Ok(CarrierConfig {
        name,
        settings,
        delivery,
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn parse_routes(
    v: &toml::Value,
    locator: &Locator<'_>,
    names: &HashSet<String>,
) -> Result<Routes, ConfigError> {
    let Some(t) = v.as_table() else {
        return Err(locator.err_top("routes", "must be a table"));
    };
    let list =
        |t: &toml::Table, key: &str, path: &str| -> Result<Option<Vec<String>>, ConfigError> {
            let Some(v) = t.get(key) else { return Ok(None) };
            let err = |p: &str| ConfigError {
                line: locator.line_of_key_in("[routes]", key),
                key: path.to_string(),
                problem: p.to_string(),
            };
            let arr = v
                .as_array()
                .ok_or_else(|| err("must be a list of carrier names"))?;
            let mut out = Vec::new();
            for n in arr {
                let n = n
                    .as_str()
                    .ok_or_else(|| err("must be a list of carrier names"))?;
                if !names.contains(n) {
                    return Err(err("names a carrier that is not configured"));
                }
                out.push(n.to_string());
            }
            Ok(Some(out))
        };
    let mut routes = Routes {
        codes: list(t, "codes", "routes.codes")?,
        tasks: list(t, "tasks", "routes.tasks")?,
        email: list(t, "email", "routes.email")?,
        prefix: Vec::new(),
    };
    for k in t.keys() {
        if !["codes", "tasks", "email", "prefix"].contains(&k.as_str()) {
            return Err(ConfigError {
                line: locator.line_of_key_in("[routes]", k),
                key: format!("routes.{k}"),
                problem: "unknown key".into(),
            });
        }
    }
    if let Some(p) = t.get("prefix") {
        let arr = p
            .as_array()
            .ok_or_else(|| locator.err_top("routes.prefix", "must be [[routes.prefix]] tables"))?;
        for (i, e) in arr.iter().enumerate() {
            let e = e.as_table().ok_or_else(|| {
                locator.err_top("routes.prefix", "must be [[routes.prefix]] tables")
            })?;
            let path = |k: &str| format!("routes.prefix[{i}].{k}");
            let prefix = e
                .get("prefix")
                .and_then(|v| v.as_str())
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| ConfigError {
                    line: locator.line_of_nth("[[routes.prefix]]", i),
                    key: path("prefix"),
                    problem: "required: a string of digits".into(),
                })?
                .to_string();
            routes.prefix.push(PrefixRoute {
                prefix,
                codes: list(e, "codes", &path("codes"))?,
                tasks: list(e, "tasks", &path("tasks"))?,
            });
        }
    }
    Ok(routes)
}

/// Turns a parser message into one that cannot echo a value.
fn sanitize(msg: &str) -> String {
    match msg.find(", expected") {
        Some(i) if msg.starts_with("invalid") => format!("invalid value{}", &msg[i..]),
        _ => msg.chars().take(120).collect(),
    }
}

fn line_of(src: &str, offset: usize) -> usize {
    src.get(..offset.min(src.len()))
        .map(|s| s.matches('\n').count() + 1)
        .unwrap_or(0)
}

/// Finds lines by scanning the text (values never leave it).
struct Locator<'a> {
    src: &'a str,
}

impl Locator<'_> {
    fn header_lines(&self, header: &str) -> Vec<usize> {
        self.src
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim().split('#').next().map(str::trim) == Some(header))
            .map(|(i, _)| i + 1)
            .collect()
    }

    fn line_of_nth(&self, header: &str, n: usize) -> usize {
        self.header_lines(header).get(n).copied().unwrap_or(0)
    }

    /// The line of `key = …` in the section opened at line `start` (or
    /// `start` itself when the key is missing).
    fn line_of_key_after(&self, start: usize, key: &str) -> usize {
        for (i, l) in self.src.lines().enumerate().skip(start) {
            let t = l.trim_start();
            if t.starts_with('[') {
                break;
            }
            if let Some(rest) = t.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return i + 1;
                }
            }
        }
        start
    }

    fn line_of_key_in(&self, header: &str, key: &str) -> usize {
        match self.header_lines(header).first() {
            Some(&l) => self.line_of_key_after(l, key),
            None => 0,
        }
    }

    fn err_top(&self, key: &str, problem: &str) -> ConfigError {
        let line = self
            .src
            .lines()
            .position(|l| {
                let t = l.trim_start().trim_start_matches('[');
                t.starts_with(key)
            })
            .map(|i| i + 1)
            .unwrap_or(0);
        ConfigError {
            line,
            key: key.to_string(),
            problem: problem.to_string(),
        }
    }
}

/// One `[[carrier]]` table, read key by key.
struct Fields<'a> {
    table: &'a toml::Table,
    index: usize,
    locator: &'a Locator<'a>,
    used: std::cell::RefCell<HashSet<String>>,
}

impl Fields<'_> {
    fn err(&self, key: &str, problem: &str) -> ConfigError {
        let start = self.locator.line_of_nth("[[carrier]]", self.index);
        ConfigError {
            line: if start == 0 {
                0
            } else {
                self.locator.line_of_key_after(start, key)
            },
            key: format!("carrier[{}].{key}", self.index),
            problem: problem.to_string(),
        }
    }

    fn get(&self, key: &str) -> Option<&toml::Value> {
        self.used.borrow_mut().insert(key.to_string());
        self.table.get(key)
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(key, "must be a string")),
        }
    }

    fn req_str(&self, key: &str) -> Result<String, ConfigError> {
        self.opt_str(key)?
            .ok_or_else(|| self.err(key, "required key is missing"))
    }

    fn opt_secret(&self, key: &str) -> Result<Option<Secret>, ConfigError> {
        Ok(self.opt_str(key)?.map(Secret))
    }

    fn req_secret(&self, key: &str) -> Result<Secret, ConfigError> {
        let s = self.req_str(key)?;
        if s.is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        Ok(Secret(s))
    }

    fn endpoint(&self, default: &str) -> Result<String, ConfigError> {
        let e = self
            .opt_str("endpoint")?
            .unwrap_or_else(|| default.to_string());
        if !(e.starts_with("https://") || e.starts_with("http://")) {
            return Err(self.err("endpoint", "must be an http(s) URL"));
        }
        Ok(if e.ends_with('/') { e } else { format!("{e}/") })
    }

    fn opt_u64(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(toml::Value::Integer(n)) if *n >= 0 => Ok(*n as u64),
            Some(_) => Err(self.err(key, "must be a non-negative integer")),
        }
    }

    fn opt_f64(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(toml::Value::Integer(n)) if *n >= 0 => Ok(*n as f64),
            Some(toml::Value::Float(x)) if x.is_finite() && *x >= 0.0 => Ok(*x),
            Some(_) => Err(self.err(key, "must be a non-negative number")),
        }
    }

    fn opt_port(&self, key: &str, default: u16) -> Result<u16, ConfigError> {
        let n = self.opt_u64(key, u64::from(default))?;
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| self.err(key, "must be a port (1..=65535)"))
    }

    fn template_settings(&self) -> Result<TemplateSettings, ConfigError> {
        Ok(TemplateSettings {
            sign_name: self.req_str("sign_name")?,
            code_template: self.req_str("code_template")?,
            task_templates: self.templates()?,
            callback_token: self.opt_secret("callback_token")?,
            timeout_secs: self.opt_u64("timeout_secs", 10)?,
        })
    }

    fn templates(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut out = BTreeMap::new();
        match self.get("task_templates") {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (k, v) in t {
                    match (k.parse::<i64>(), v.as_str()) {
                        (Ok(_), Some(v)) => {
                            out.insert(k.clone(), v.to_string());
                        }
                        _ => {
                            return Err(self.err(
                                "task_templates",
                                "must map sendapi temp_id numbers to template strings",
                            ))
                        }
                    }
                }
            }
            Some(_) => return Err(self.err("task_templates", "must be an inline table")),
        }
        Ok(out)
    }

    fn finish(&self) -> Result<(), ConfigError> {
        let used = self.used.borrow();
        match self.table.keys().find(|k| !used.contains(k.as_str())) {
            Some(k) => Err(self.err(k, "unknown key for this kind")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[carrier]]
name = "ali"
kind = "aliyun"
endpoint = "http://127.0.0.1:1/"
access_key_id = "LTAIid"
access_key_secret = "topsecret-ali"
sign_name = "阿里云短信测试"
code_template = "SMS_154950909"
task_templates = { "3" = "SMS_2000001" }
callback_token = "cbtoken"

[[carrier]]
name = "tc"
kind = "tencent"
secret_id = "AKIDx"
secret_key = "topsecret-tc"
region = "ap-guangzhou"
sdk_app_id = "1400006666"
sign_name = "腾讯云"
code_template = "1110"

[[carrier]]
name = "tw"
kind = "twilio"
account_sid = "AC1"
auth_token = "topsecret-tw"
from = "+15005550006"
public_url = "https://sms.example.com/"

[[carrier]]
name = "smsc"
kind = "smpp"
rate_per_sec = 2.5
host = "127.0.0.1"
port = 2775
system_id = "sys"
password = "pw"
source_addr = "10690000"
window = 10

[[carrier]]
name = "mail"
kind = "smtp"
host = "smtp.example.com"
port = 587
tls = "starttls"
username = "u"
password = "topsecret-mail"
from = "SMS Platform <no-reply@example.com>"

[[carrier]]
name = "file"
kind = "outbox"

[routes]
codes = ["ali", "tc"]
tasks = ["smsc", "tw"]
email = ["mail"]

[[routes.prefix]]
prefix = "86170"
codes = ["tc"]
"#;

    #[test]
    fn sample_parses_and_secrets_stay_hidden() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.carriers.len(), 6);
        assert_eq!(
            c.routes.codes.as_deref(),
            Some(&["ali".to_string(), "tc".to_string()][..])
        );
        assert_eq!(c.routes.for_sms("17012345678", false).unwrap(), ["tc"]);
        assert_eq!(
            c.routes.for_sms("13812345678", false).unwrap(),
            ["ali", "tc"]
        );
        assert_eq!(
            c.routes.for_sms("13812345678", true).unwrap(),
            ["smsc", "tw"]
        );
        let dbg = format!("{c:?}");
        for s in [
            "topsecret-ali",
            "topsecret-tc",
            "topsecret-tw",
            "topsecret-mail",
            "cbtoken",
        ] {
            assert!(!dbg.contains(s), "{s} leaked");
        }
        match &c.carriers[2].settings {
            CarrierSettings::Twilio(t) => assert_eq!(t.public_url, "https://sms.example.com"),
            other => panic!("{other:?}"),
        }
    }

    fn err(src: &str) -> ConfigError {
        parse(src).unwrap_err()
    }

    #[test]
    fn errors_name_line_and_key_never_the_value() {
        let e = err(&SAMPLE.replace("kind = \"tencent\"", "kind = \"pigeon\""));
        assert_eq!((e.line, e.key.as_str()), (15, "carrier[1].kind"), "{e}");
        let e = err(&SAMPLE.replace("secret_key = \"topsecret-tc\"\n", ""));
        assert_eq!(e.key, "carrier[1].secret_key");
        assert!(e.problem.contains("missing"), "{e}");
        let e = err(&SAMPLE.replace("password = \"pw\"", "password = \"toolongpw9\""));
        assert_eq!((e.line, e.key.as_str()), (38, "carrier[3].password"), "{e}");
        assert!(!e.to_string().contains("toolongpw9"));
        let e = err(&SAMPLE.replace("password = \"topsecret-mail\"", "password = 12345678"));
        assert!(!e.to_string().contains("12345678"), "{e}");
        assert_eq!(e.key, "carrier[4].password");
        let e = err(&SAMPLE.replace("tasks = [\"smsc\", \"tw\"]", "tasks = [\"smsc\", \"nope\"]"));
        assert_eq!((e.line, e.key.as_str()), (58, "routes.tasks"), "{e}");
        let e = err(&SAMPLE.replace(
            "access_key_secret = \"topsecret-ali\"",
            "access_key_secret = \"topsecret-ali",
        ));
        assert_eq!(e.line, 7, "{e}");
        assert!(!e.to_string().contains("topsecret"), "{e}");
        let e = err(&SAMPLE.replace(
            "host = \"smtp.example.com\"",
            "host = \"smtp.example.com\"\ncolour = \"red\"",
        ));
        assert_eq!(e.key, "carrier[4].colour");
        let e = err(&SAMPLE.replace("tls = \"starttls\"", "tls = \"none\""));
        assert_eq!(e.key, "carrier[4].tls");
        let e = err(&SAMPLE.replace("name = \"tc\"", "name = \"ali\""));
        assert_eq!(e.key, "carrier[1].name");
        let e = err(&SAMPLE.replace("name = \"tc\"", "name = \"T C\""));
        assert_eq!(e.key, "carrier[1].name");
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.carriers[3].delivery.rate_per_sec, 2.5);
        assert_eq!(c.carriers[0].delivery.retries, 2);
        let e = err(&SAMPLE.replace("rate_per_sec = 2.5", "rate_per_sec = \"fast\""));
        assert_eq!(e.key, "carrier[3].rate_per_sec");
    }
}
