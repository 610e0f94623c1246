//! Request signatures, each pinned by a test to its provider's documented
//! example: Alibaba Cloud RPC (HMAC-SHA1) and V3 (`ACS3-HMAC-SHA256`),
//! Tencent Cloud TC3-HMAC-SHA256, Twilio request validation.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

fn hmac_sha1(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut m = <HmacSha1 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// RFC 3986 percent-encoding as both Alibaba Cloud signatures use it:
/// everything but `A-Z a-z 0-9 - _ . ~` is encoded (space is `%20`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical query of Alibaba Cloud: pairs sorted by key, each side
/// percent-encoded, joined with `&`.
pub fn aliyun_canonical_query(params: &[(String, String)]) -> String {
    let mut p: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    p.sort();
    p.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Alibaba Cloud RPC signature (HMAC-SHA1, `SignatureVersion` 1.0) of
/// `params` (every parameter but `Signature`) for `method` (`GET` or
/// `POST`): base64 of HMAC-SHA1 under `secret&` of
/// `METHOD&%2F&percent(canonical query)`.
pub fn aliyun_rpc(method: &str, params: &[(String, String)], secret: &str) -> String {
    let string_to_sign = format!(
        "{method}&{}&{}",
        percent_encode("/"),
        percent_encode(&aliyun_canonical_query(params))
    );
    base64::engine::general_purpose::STANDARD.encode(hmac_sha1(
        format!("{secret}&").as_bytes(),
        string_to_sign.as_bytes(),
    ))
}

/// The parts of an Alibaba Cloud V3 request that are signed.
#[derive(Debug, Clone)]
pub struct AliyunV3Request<'a> {
    /// `POST`, `GET` …
    pub method: &'a str,
    /// The path (`/`).
    pub path: &'a str,
    /// Query parameters.
    pub query: &'a [(String, String)],
    /// Headers to sign (lowercase names): `host` and every `x-acs-*`
    /// (including `x-acs-content-sha256`).
    pub headers: &'a [(String, String)],
    /// Lowercase hex SHA-256 of the body.
    pub payload_sha256: &'a str,
}

/// Alibaba Cloud V3 signature (`ACS3-HMAC-SHA256`): returns the signed
/// header list and the hex signature; the `Authorization` header is
/// `ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<list>,Signature=<sig>`.
pub fn aliyun_v3(req: &AliyunV3Request<'_>, secret: &str) -> (String, String) {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        aliyun_canonical_query(req.query),
        canonical_headers,
        signed,
        req.payload_sha256
    );
    let string_to_sign = format!("ACS3-HMAC-SHA256\n{}", sha256_hex(canonical.as_bytes()));
    let sig = hex::encode(hmac_sha256(secret.as_bytes(), string_to_sign.as_bytes()));
    (signed, sig)
}

/// The parts of a Tencent Cloud request that TC3 signs.
#[derive(Debug, Clone)]
pub struct Tc3Request<'a> {
    /// The service of the credential scope (`sms`, `cvm`).
    pub service: &'a str,
    /// Unix seconds (`X-TC-Timestamp`).
    pub timestamp: i64,
    /// Signed headers, lowercase names, in the order to sign
    /// (`content-type`, `host`, `x-tc-action`); values are lowercased.
    pub headers: &'a [(&'a str, &'a str)],
    /// The JSON body.
    pub payload: &'a [u8],
}

/// TC3-HMAC-SHA256 (POST, path `/`, empty query): returns the whole
/// `Authorization` header value.
pub fn tencent_tc3(req: &Tc3Request<'_>, secret_id: &str, secret_key: &str) -> String {
    let canonical_headers: String = req
        .headers
        .iter()
        .map(|(k, v)| {
            format!(
                "{}:{}\n",
                k.to_ascii_lowercase(),
                v.trim().to_ascii_lowercase()
            )
        })
        .collect();
    let signed = req
        .headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "POST\n/\n\n{canonical_headers}\n{signed}\n{}",
        sha256_hex(req.payload)
    );
    let date = chrono::DateTime::from_timestamp(req.timestamp, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string();
    let scope = format!("{date}/{}/tc3_request", req.service);
    let string_to_sign = format!(
        "TC3-HMAC-SHA256\n{}\n{scope}\n{}",
        req.timestamp,
        sha256_hex(canonical.as_bytes())
    );
    let k_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac_sha256(&k_date, req.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"tc3_request");
    let sig = hex::encode(hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    format!(
        "TC3-HMAC-SHA256 Credential={secret_id}/{scope}, SignedHeaders={signed}, Signature={sig}"
    )
}

/// Twilio's request signature: base64 HMAC-SHA1 under the auth token of
/// the full URL followed by every POST parameter's name and value, sorted
/// by name.
pub fn twilio(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut p: Vec<&(String, String)> = params.iter().collect();
    p.sort();
    let mut data = url.to_string();
    for (k, v) in p {
        data.push_str(k);
        data.push_str(v);
    }
    base64::engine::general_purpose::STANDARD
        .encode(hmac_sha1(auth_token.as_bytes(), data.as_bytes()))
}

/// Checks an `X-Twilio-Signature` in constant time, accepting the URL with
/// and without the scheme's default port (443/80), as Twilio's own
/// validators do.
pub fn twilio_valid(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    url_port_variants(url).iter().any(|u| {
        ct_eq(
            twilio(auth_token, u, params).as_bytes(),
            signature.as_bytes(),
        )
    })
}

/// `url` as given, without its default port, and with it.
fn url_port_variants(url: &str) -> Vec<String> {
    let (scheme, port) = if url.starts_with("https://") {
        ("https://", ":443")
    } else if url.starts_with("http://") {
        ("http://", ":80")
    } else {
        return vec![url.to_string()];
    };
    let rest = &url[scheme.len()..];
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(split);
    let bare = host.strip_suffix(port).unwrap_or(host);
    let mut out = vec![url.to_string(), format!("{scheme}{bare}{tail}")];
    if !bare.contains(':') || bare.ends_with(']') {
        out.push(format!("{scheme}{bare}{port}{tail}"));
    }
    out
}

/// Constant-time equality of two byte strings (length may leak).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Alibaba Cloud SMS, "HTTP protocol and signature": the SendSms GET
    /// example with keys testId / testSecret.
    #[test]
    fn aliyun_rpc_documented_example() {
        let params = p(&[
            ("AccessKeyId", "testId"),
            ("Action", "SendSms"),
            ("Format", "XML"),
            ("OutId", "123"),
            ("PhoneNumbers", "15300000001"),
            ("RegionId", "cn-hangzhou"),
            ("SignName", "阿里云短信测试专用"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "45e25e9b-0a6f-4070-8c85-2956eda1b466"),
            ("SignatureVersion", "1.0"),
            ("TemplateCode", "SMS_71390007"),
            ("TemplateParam", "{\"customer\":\"test\"}"),
            ("Timestamp", "2017-07-12T02:42:19Z"),
            ("Version", "2017-05-25"),
        ]);
        assert_eq!(
            aliyun_rpc("GET", &params, "testSecret"),
            "zJDF+Lrzhj/ThnlvIToysFRq6t4="
        );
    }

    /// Alibaba Cloud "Request syntax and signature method V3": the
    /// RunInstances example (key YourAccessKeySecret).
    #[test]
    fn aliyun_v3_documented_example() {
        let empty = sha256_hex(b"");
        let query = p(&[
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
            ("RegionId", "cn-shanghai"),
        ]);
        let headers = p(&[
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-content-sha256", &empty),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
        ]);
        let (signed, sig) = aliyun_v3(
            &AliyunV3Request {
                method: "POST",
                path: "/",
                query: &query,
                headers: &headers,
                payload_sha256: &empty,
            },
            "YourAccessKeySecret",
        );
        assert_eq!(
            signed,
            "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
        );
        assert_eq!(
            sig,
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    /// Tencent Cloud API 3.0 "Signature v3": the DescribeInstances example.
    #[test]
    fn tencent_tc3_documented_example() {
        let body = br#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        let auth = tencent_tc3(
            &Tc3Request {
                service: "cvm",
                timestamp: 1551113065,
                headers: &[
                    ("content-type", "application/json; charset=utf-8"),
                    ("host", "cvm.tencentcloudapi.com"),
                ],
                payload: body,
            },
            "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
        );
        assert_eq!(
            auth,
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, \
             SignedHeaders=content-type;host, \
             Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }

    /// Twilio "Webhooks security": token 12345 and its example request.
    #[test]
    fn twilio_documented_example() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            twilio("12345", url, &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        assert!(twilio_valid("12345", url, &params, sig));
        assert!(twilio_valid(
            "12345",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &params,
            sig
        ));
        let with_port = twilio(
            "12345",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &params,
        );
        assert!(twilio_valid("12345", url, &params, &with_port));
        assert!(!twilio_valid("12346", url, &params, sig));
        assert!(!twilio_valid("12345", url, &params[1..], sig));
    }
}
