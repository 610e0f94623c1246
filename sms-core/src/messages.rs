//! The texts of outgoing code messages: one template per purpose and locale,
//! configuration like every other rule ([`crate::codes::CodePolicy::messages`]).
//! `zh-CN` is the default (the seeds' language); `en-US` ships too.

use std::collections::BTreeMap;

use crate::store::Purpose;

/// Code message templates of one locale. Each template may use `{code}` and
/// `{minutes}` (the code's validity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeMessages {
    /// The locale tag, e.g. `zh-CN`.
    pub locale: String,
    /// Sign-up codes (`telsignup` validation, `account_v4` register).
    pub register: String,
    /// Password recovery codes.
    pub reset: String,
    /// Email binding codes.
    pub bind_email: String,
    /// Texts of the embedder's own purposes, by name.
    pub custom: BTreeMap<String, String>,
    /// Custom purposes without a text of their own.
    pub other: String,
}

impl Default for CodeMessages {
    fn default() -> Self {
        Self::zh_cn()
    }
}

impl CodeMessages {
    /// Simplified Chinese (the default).
    pub fn zh_cn() -> Self {
        let text = |what: &str| {
            format!("您的{what}验证码是 {{code}}，{{minutes}} 分钟内有效，请勿泄露给他人。")
        };
        Self {
            locale: "zh-CN".into(),
            register: text("注册"),
            reset: text("找回密码"),
            bind_email: text("绑定邮箱"),
            custom: BTreeMap::new(),
            other: "您的验证码是 {code}，{minutes} 分钟内有效，请勿泄露给他人。".into(),
        }
    }

    /// US English.
    pub fn en_us() -> Self {
        let text = |what: &str| {
            format!("Your {what} code is {{code}}. It is valid for {{minutes}} minutes; do not share it.")
        };
        Self {
            locale: "en-US".into(),
            register: text("sign-up"),
            reset: text("password reset"),
            bind_email: text("email verification"),
            custom: BTreeMap::new(),
            other: "Your verification code is {code}. It is valid for {minutes} minutes; do not share it.".into(),
        }
    }

    /// The shipped templates of `tag` (`zh-CN`, `en-US`; case-insensitive,
    /// `_` or `-`).
    pub fn for_locale(tag: &str) -> Option<Self> {
        match tag.to_ascii_lowercase().replace('_', "-").as_str() {
            "zh-cn" | "zh" => Some(Self::zh_cn()),
            "en-us" | "en" => Some(Self::en_us()),
            _ => None,
        }
    }

    /// Adds (or replaces) the text of a custom purpose.
    pub fn with_custom(mut self, purpose: &str, template: impl Into<String>) -> Self {
        self.custom.insert(purpose.to_owned(), template.into());
        self
    }

    /// The message for a code of `purpose`.
    pub fn render(&self, purpose: Purpose, code: &str, minutes: i64) -> String {
        let template = match purpose {
            Purpose::Signup | Purpose::Register => &self.register,
            Purpose::Reset => &self.reset,
            Purpose::BindEmail => &self.bind_email,
            Purpose::Custom(c) => self.custom.get(c.as_str()).unwrap_or(&self.other),
        };
        template
            .replace("{minutes}", &minutes.to_string())
            .replace("{code}", code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_texts_are_the_chinese_ones_and_english_ships() {
        let zh = CodeMessages::default();
        assert_eq!(
            zh.render(Purpose::Register, "482913", 5),
            "您的注册验证码是 482913，5 分钟内有效，请勿泄露给他人。"
        );
        let en = CodeMessages::for_locale("en_US").unwrap();
        assert_eq!(
            en.render(Purpose::Reset, "482913", 5),
            "Your password reset code is 482913. It is valid for 5 minutes; do not share it."
        );
        assert!(CodeMessages::for_locale("fr-FR").is_none());
    }

    #[test]
    fn custom_purposes_use_their_own_text_or_the_generic_one() {
        let m = CodeMessages::en_us().with_custom("login", "Login code: {code}");
        let login = Purpose::custom("login").unwrap();
        let tfa = Purpose::custom("two_factor").unwrap();
        assert_eq!(m.render(login, "111111", 5), "Login code: 111111");
        assert!(m.render(tfa, "222222", 5).contains("222222"));
        // A code containing a placeholder's text is never expanded again.
        assert_eq!(m.render(login, "{minutes}", 5), "Login code: {minutes}");
    }
}
