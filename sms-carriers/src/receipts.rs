//! Delivery receipts of every provider, normalised to
//! [`DeliveryStatus`] (carriers.md C3). Pure functions: the HTTP route and
//! the SMPP bind call them.

use serde::Deserialize;
use sms_core::carrier::{DeliveryStatus, Receipt};

use crate::sign;

/// A receipt body that is not what the provider sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Not the provider's JSON.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// A missing or wrong signature or token.
    #[error("receipt not authenticated")]
    Unauthenticated,
}

/// What Aliyun expects back from a receipt push.
pub const ALIYUN_ANSWER: &str = r#"{"code":0,"msg":"接收成功"}"#;
/// What Tencent expects back from a status callback.
pub const TENCENT_ANSWER: &str = r#"{"result":0,"errmsg":"OK"}"#;

#[derive(Deserialize)]
struct AliyunReport {
    #[serde(default)]
    phone_number: Option<String>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    err_code: Option<String>,
    biz_id: String,
    #[serde(default)]
    out_id: Option<String>,
}

/// Aliyun's `SmsReport` push: a JSON array of
/// `{phone_number, success, err_code, biz_id, out_id, …}`. `success`
/// decides; `err_code` is the carrier code (`DELIVERED`, `MK:0001` …;
/// codes naming expiry map to `expired`).
pub fn aliyun(body: &[u8]) -> Result<Vec<Receipt>, ReceiptError> {
    let reports: Vec<AliyunReport> =
        serde_json::from_slice(body).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    Ok(reports
        .into_iter()
        .map(|r| {
            let code = r.err_code.unwrap_or_default();
            let status = match r.success {
                Some(true) => DeliveryStatus::Delivered,
                Some(false) if is_expiry(&code) => DeliveryStatus::Expired,
                Some(false) => DeliveryStatus::Failed,
                None => DeliveryStatus::Unknown,
            };
            Receipt {
                provider_id: r.biz_id,
                idempotency_key: r.out_id.filter(|s| !s.is_empty()),
                recipient: r.phone_number,
                status,
                carrier_code: code,
            }
        })
        .collect())
}

fn is_expiry(code: &str) -> bool {
    let c = code.to_ascii_uppercase();
    c.contains("EXPIRED") || c == "MK:0005" || c == "DB:0108"
}

#[derive(Deserialize)]
struct TencentReport {
    #[serde(default)]
    mobile: Option<String>,
    #[serde(default)]
    nationcode: Option<String>,
    report_status: String,
    #[serde(default)]
    errmsg: Option<String>,
    sid: String,
    #[serde(default)]
    ext: Option<serde_json::Value>,
}

/// Tencent's status callback: a JSON array of
/// `{mobile, nationcode, report_status: SUCCESS|FAIL, errmsg, sid, ext}`.
/// `sid` is the `SerialNo` of `SendSms`; `errmsg` the carrier code.
pub fn tencent(body: &[u8]) -> Result<Vec<Receipt>, ReceiptError> {
    let reports: Vec<TencentReport> =
        serde_json::from_slice(body).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    Ok(reports
        .into_iter()
        .map(|r| {
            let code = r.errmsg.unwrap_or_default();
            let status = match r.report_status.as_str() {
                "SUCCESS" => DeliveryStatus::Delivered,
                "FAIL" if is_expiry(&code) => DeliveryStatus::Expired,
                "FAIL" => DeliveryStatus::Failed,
                _ => DeliveryStatus::Unknown,
            };
            let key = r
                .ext
                .as_ref()
                .and_then(|e| {
                    e.as_str()
                        .map(str::to_string)
                        .or_else(|| e.get("SessionContext")?.as_str().map(str::to_string))
                })
                .filter(|s| !s.is_empty());
            Receipt {
                provider_id: r.sid,
                idempotency_key: key,
                recipient: r.mobile.map(|m| match r.nationcode {
                    Some(n) if !n.is_empty() => format!("+{n}{m}"),
                    _ => m,
                }),
                status,
                carrier_code: code,
            }
        })
        .collect())
}

/// Twilio's status callback: form fields `MessageSid`, `MessageStatus`,
/// `ErrorCode`, `To`, signed with `X-Twilio-Signature` over `url` (the
/// platform's `public_url` + path + query) and every field. An unsigned
/// or wrongly signed callback is [`ReceiptError::Unauthenticated`]. The
/// query's `key` (set in `StatusCallback`) is the idempotency key.
pub fn twilio(
    auth_token: &str,
    url: &str,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Vec<Receipt>, ReceiptError> {
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let Some(sig) = signature else {
        return Err(ReceiptError::Unauthenticated);
    };
    if !sign::twilio_valid(auth_token, url, &params, sig) {
        return Err(ReceiptError::Unauthenticated);
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(sid) = get("MessageSid").or_else(|| get("SmsSid")) else {
        return Err(ReceiptError::Malformed("no MessageSid".into()));
    };
    let raw = get("MessageStatus")
        .or_else(|| get("SmsStatus"))
        .unwrap_or_default();
    let status = match raw.as_str() {
        "delivered" | "read" => DeliveryStatus::Delivered,
        "undelivered" | "failed" | "canceled" => DeliveryStatus::Failed,
        "sent" | "queued" | "sending" | "accepted" | "scheduled" => DeliveryStatus::Sent,
        _ => DeliveryStatus::Unknown,
    };
    let code = match get("ErrorCode").filter(|c| !c.is_empty()) {
        Some(c) => c,
        None => raw,
    };
    let key = url.split_once('?').and_then(|(_, q)| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v.into_owned())
    });
    Ok(vec![Receipt {
        provider_id: sid,
        idempotency_key: key,
        recipient: get("To"),
        status,
        carrier_code: code,
    }])
}

/// An SMPP delivery receipt's text (SMPP 3.4 appendix B):
/// `id:… sub:… dlvrd:… submit date:… done date:… stat:DELIVRD err:… text:…`.
/// `None` when the text is not a receipt.
pub fn smpp_text(text: &str) -> Option<Receipt> {
    let field = |name: &str| -> Option<&str> {
        let start = text.find(name)? + name.len();
        let rest = &text[start..];
        Some(rest.split_whitespace().next().unwrap_or(""))
    };
    let id = field("id:")?.to_string();
    let stat = field("stat:")?;
    let err = field("err:").unwrap_or("");
    Some(Receipt {
        provider_id: id,
        idempotency_key: None,
        recipient: None,
        status: smpp_stat(stat),
        carrier_code: if err.is_empty() || err.bytes().all(|b| b == b'0') {
            stat.to_string()
        } else {
            format!("{stat}/{err}")
        },
    })
}

/// The status of an SMPP `stat:` word (also the `message_state` TLV's
/// names).
pub fn smpp_stat(stat: &str) -> DeliveryStatus {
    match stat {
        "DELIVRD" => DeliveryStatus::Delivered,
        "EXPIRED" => DeliveryStatus::Expired,
        "UNDELIV" | "REJECTD" | "DELETED" => DeliveryStatus::Failed,
        "ACCEPTD" | "ENROUTE" => DeliveryStatus::Sent,
        _ => DeliveryStatus::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliyun_report() {
        let body = r#"[{"phone_number":"13800000000","send_time":"2017-01-01 11:12:13","report_time":"2017-02-02 22:23:24","success":true,"err_code":"DELIVERED","err_msg":"用户接收成功","sms_size":"1","biz_id":"932702304080415357^0","out_id":"t1:0"},
                       {"phone_number":"13800000001","success":false,"err_code":"MK:0001","biz_id":"b2","out_id":""}]"#;
        let r = aliyun(body.as_bytes()).unwrap();
        assert_eq!(r[0].status, DeliveryStatus::Delivered);
        assert_eq!(r[0].idempotency_key.as_deref(), Some("t1:0"));
        assert_eq!(r[0].provider_id, "932702304080415357^0");
        assert_eq!(r[1].status, DeliveryStatus::Failed);
        assert_eq!(r[1].carrier_code, "MK:0001");
        assert_eq!(r[1].idempotency_key, None);
        assert!(aliyun(b"{}").is_err());
    }

    #[test]
    fn tencent_callback() {
        let body = r#"[{"user_receive_time":"2015-10-17 08:03:04","nationcode":"86","mobile":"13800000000","report_status":"SUCCESS","errmsg":"DELIVRD","description":"用户短信送达成功","sid":"2019:123","ext":{}},
                       {"nationcode":"86","mobile":"13800000001","report_status":"FAIL","errmsg":"MI:0013","sid":"2019:124"},
                       {"mobile":"13800000002","report_status":"FAIL","errmsg":"EXPIRED","sid":"2019:125"}]"#;
        let r = tencent(body.as_bytes()).unwrap();
        assert_eq!(r[0].status, DeliveryStatus::Delivered);
        assert_eq!(r[0].recipient.as_deref(), Some("+8613800000000"));
        assert_eq!(r[1].status, DeliveryStatus::Failed);
        assert_eq!(r[1].carrier_code, "MI:0013");
        assert_eq!(r[2].status, DeliveryStatus::Expired);
        assert!(tencent(b"[{\"sid\":1}]").is_err());
    }

    #[test]
    fn twilio_callback_checks_signature() {
        let url = "https://sms.example.com/carriers/tw/receipts?key=t1%3A0";
        let body = "MessageSid=SM1&MessageStatus=undelivered&ErrorCode=30003&To=%2B8613800000000&AccountSid=AC1";
        let params: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let sig = sign::twilio("tok", url, &params);
        let r = twilio("tok", url, Some(&sig), body.as_bytes()).unwrap();
        assert_eq!(r[0].status, DeliveryStatus::Failed);
        assert_eq!(r[0].carrier_code, "30003");
        assert_eq!(r[0].recipient.as_deref(), Some("+8613800000000"));
        assert_eq!(r[0].idempotency_key.as_deref(), Some("t1:0"));
        let port = "https://sms.example.com:443/carriers/tw/receipts?key=t1%3A0";
        assert!(twilio("tok", port, Some(&sig), body.as_bytes()).is_ok());
        assert_eq!(
            twilio("tok", url, None, body.as_bytes()),
            Err(ReceiptError::Unauthenticated)
        );
        assert_eq!(
            twilio("bad", url, Some(&sig), body.as_bytes()),
            Err(ReceiptError::Unauthenticated)
        );
        let ok = "MessageSid=SM2&MessageStatus=delivered";
        let params: Vec<(String, String)> =
            form_urlencoded::parse(ok.as_bytes()).into_owned().collect();
        let sig = sign::twilio("tok", url, &params);
        let r = twilio("tok", url, Some(&sig), ok.as_bytes()).unwrap();
        assert_eq!(
            (r[0].status, r[0].carrier_code.as_str()),
            (DeliveryStatus::Delivered, "delivered")
        );
    }

    #[test]
    fn smpp_receipt_text() {
        let r = smpp_text("id:0123456789 sub:001 dlvrd:001 submit date:2412050101 done date:2412050102 stat:DELIVRD err:000 text:hello").unwrap();
        assert_eq!(
            (r.provider_id.as_str(), r.status),
            ("0123456789", DeliveryStatus::Delivered)
        );
        assert_eq!(r.carrier_code, "DELIVRD");
        let r = smpp_text("id:abc sub:001 dlvrd:000 submit date:2412050101 done date:2412050102 stat:UNDELIV err:034 text:").unwrap();
        assert_eq!(
            (r.status, r.carrier_code.as_str()),
            (DeliveryStatus::Failed, "UNDELIV/034")
        );
        assert_eq!(
            smpp_text("id:x stat:EXPIRED err:0").unwrap().status,
            DeliveryStatus::Expired
        );
        assert!(smpp_text("hello there").is_none());
    }
}
