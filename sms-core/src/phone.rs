//! Phone numbers.
//!
//! [`PhoneNumber`] holds a number in E.164 form (`+8613811112222`), so the core
//! serves numbers anywhere. The wire dialects of this project serve
//! mainland-China mobiles and use [`PhoneNumber::parse_cn_mobile`], which
//! applies decision G5: `+86`, `0086` or `86` prefixes, ASCII spaces and dashes
//! are accepted and removed, then the rest must match `^1\d{10}$`. Anything
//! else — full-width digits, letters, other separators — is invalid. Every
//! accepted spelling of one number yields the same value, so uniqueness, rate
//! limits and storage all see one key.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// Inputs longer than this are rejected before any other work.
pub const MAX_PHONE_INPUT_LEN: usize = 64;

/// A validated phone number in E.164 form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses a mainland-China mobile number with the normalisation of
    /// decision G5.
    ///
    /// ```
    /// use sms_core::phone::PhoneNumber;
    /// let a = PhoneNumber::parse_cn_mobile("+86 138-1111-2222").unwrap();
    /// let b = PhoneNumber::parse_cn_mobile("13811112222").unwrap();
    /// assert_eq!(a, b);
    /// assert_eq!(a.to_string(), "13811112222");
    /// assert!(PhoneNumber::parse_cn_mobile("１3811112222").is_err());
    /// ```
    pub fn parse_cn_mobile(input: &str) -> Result<Self, CoreError> {
        if input.len() > MAX_PHONE_INPUT_LEN {
            return Err(CoreError::InvalidPhone);
        }
        let mut digits = String::with_capacity(16);
        let mut plus = false;
        for (i, c) in input.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' => {}
                '+' if i == 0 => plus = true,
                _ => return Err(CoreError::InvalidPhone),
            }
        }
        let national = if plus {
            digits.strip_prefix("86").ok_or(CoreError::InvalidPhone)?
        } else if let Some(rest) = digits.strip_prefix("0086") {
            rest
        } else if digits.len() == 13 {
            digits.strip_prefix("86").ok_or(CoreError::InvalidPhone)?
        } else {
            &digits
        };
        if is_cn_mobile(national) {
            Ok(Self(format!("+86{national}")))
        } else {
            Err(CoreError::InvalidPhone)
        }
    }

    /// Parses a number already in E.164 form (`+` then 7 to 15 digits, the
    /// first not zero). Mainland mobiles must also pass the G5 shape.
    pub fn parse_e164(input: &str) -> Result<Self, CoreError> {
        let rest = input.strip_prefix('+').ok_or(CoreError::InvalidPhone)?;
        let ok = (7..=15).contains(&rest.len())
            && rest.bytes().all(|b| b.is_ascii_digit())
            && !rest.starts_with('0');
        if !ok {
            return Err(CoreError::InvalidPhone);
        }
        if let Some(national) = rest.strip_prefix("86") {
            if national.starts_with('1') && !is_cn_mobile(national) {
                return Err(CoreError::InvalidPhone);
            }
        }
        Ok(Self(input.to_owned()))
    }

    /// The E.164 form, `+8613811112222`.
    pub fn as_e164(&self) -> &str {
        &self.0
    }

    /// The 11-digit national form when this is a mainland-China mobile.
    pub fn cn_national(&self) -> Option<&str> {
        self.0.strip_prefix("+86").filter(|n| is_cn_mobile(n))
    }

    /// The form used on the wire: the 11-digit national form for mainland
    /// mobiles (decision G5), E.164 otherwise.
    pub fn display_form(&self) -> &str {
        self.cn_national().unwrap_or(&self.0)
    }
}

fn is_cn_mobile(s: &str) -> bool {
    s.len() == 11 && s.starts_with('1') && s.bytes().all(|b| b.is_ascii_digit())
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_form())
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = CoreError;
    fn try_from(s: String) -> Result<Self, CoreError> {
        Self::parse_e164(&s)
    }
}

impl From<PhoneNumber> for String {
    fn from(p: PhoneNumber) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepted_spellings() {
        for s in [
            "13811112222",
            "+8613811112222",
            "008613811112222",
            "8613811112222",
            "+86 138 1111 2222",
            "138-1111-2222",
            "0086-138-1111-2222",
        ] {
            let p = PhoneNumber::parse_cn_mobile(s).unwrap_or_else(|_| panic!("{s}"));
            assert_eq!(p.to_string(), "13811112222", "{s}");
            assert_eq!(p.as_e164(), "+8613811112222");
        }
    }

    #[test]
    fn rejected_spellings() {
        for s in [
            "",
            "1381111222",
            "138111122223",
            "23811112222",
            "１3811112222",
            "+1 13811112222",
            "86+13811112222",
            "138\t11112222",
            "138.1111.2222",
            "+8623811112222",
            "13811112222\0",
            "(138)11112222",
        ] {
            assert!(PhoneNumber::parse_cn_mobile(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn e164_outside_china() {
        let p = PhoneNumber::parse_e164("+14155550100").unwrap();
        assert_eq!(p.to_string(), "+14155550100");
        assert!(p.cn_national().is_none());
        assert!(PhoneNumber::parse_e164("14155550100").is_err());
        assert!(PhoneNumber::parse_e164("+0123456789").is_err());
    }

    #[test]
    fn serde_round_trip() {
        let p = PhoneNumber::parse_cn_mobile("13811112222").unwrap();
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, "\"+8613811112222\"");
        let back: PhoneNumber = serde_json::from_str(&j).unwrap();
        assert_eq!(back, p);
    }

    fn decorate(national: String, prefix: u8, seps: Vec<(usize, bool)>) -> String {
        let mut s = national;
        for (pos, dash) in seps {
            let at = pos % (s.len() + 1);
            // never split a leading '+' from its digits in a way that moves it
            if at == 0 {
                continue;
            }
            s.insert(at, if dash { '-' } else { ' ' });
        }
        match prefix % 4 {
            0 => s,
            1 => format!("+86{s}"),
            2 => format!("0086{s}"),
            _ => format!("86{s}"),
        }
    }

    proptest! {
        #[test]
        fn every_spelling_normalises_to_one_key(
            rest in "[0-9]{10}",
            prefix in 0u8..4,
            seps in proptest::collection::vec((0usize..20, any::<bool>()), 0..4),
        ) {
            let national = format!("1{rest}");
            let canonical = PhoneNumber::parse_cn_mobile(&national).unwrap();
            let spelled = decorate(national.clone(), prefix, seps);
            let parsed = PhoneNumber::parse_cn_mobile(&spelled).unwrap();
            prop_assert_eq!(&parsed, &canonical);
            prop_assert_eq!(parsed.to_string(), national);
        }

        #[test]
        fn output_is_always_eleven_digits(s in "\\PC{0,30}") {
            if let Ok(p) = PhoneNumber::parse_cn_mobile(&s) {
                let out = p.to_string();
                prop_assert_eq!(out.len(), 11);
                prop_assert!(out.starts_with('1'));
                prop_assert!(out.bytes().all(|b| b.is_ascii_digit()));
            }
        }

        #[test]
        fn full_width_digits_are_invalid(rest in "[0-9]{10}", at in 0usize..11) {
            let mut chars: Vec<char> = format!("1{rest}").chars().collect();
            let d = chars[at].to_digit(10).unwrap();
            chars[at] = char::from_u32(0xFF10 + d).unwrap();
            let s: String = chars.into_iter().collect();
            prop_assert!(PhoneNumber::parse_cn_mobile(&s).is_err());
        }
    }
}
