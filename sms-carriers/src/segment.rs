//! Splitting a text into SMS parts for SMPP: GSM-7 (unpacked, one septet
//! per octet; extension characters take two) when every character is in
//! the GSM 03.38 tables, else UCS-2. Single messages hold 160 septets or 70
//! UTF-16 units; concatenated parts 153 septets or 67 units behind a
//! 6-octet UDH (IEI 0x00, 8-bit reference). An escape pair and a UTF-16
//! surrogate pair are never split across parts. GSM-7 encoding and
//! splitting are rusmpp-extra's; UCS-2 is sent as UTF-16BE (what handsets
//! decode, so characters outside the BMP survive as surrogate pairs, which
//! rusmpp-extra's strict UCS-2 refuses), split here at character
//! boundaries.

use rusmpp::extra::concatenation::{Concatenation, Concatenator};
use rusmpp::extra::encoding::gsm7bit::Gsm7BitUnpacked;
use rusmpp::values::DataCoding;

/// The parts of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// The `data_coding` of every part.
    pub data_coding: DataCoding,
    /// Whether every part is GSM-7.
    pub gsm7: bool,
    /// The short messages; with more than one, each begins with its UDH
    /// (and needs `esm_class` UDHI).
    pub parts: Vec<Vec<u8>>,
}

/// A text that cannot be sent as SMS parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot split the message: {0}")]
pub struct SegmentError(pub String);

/// Splits `text`; `reference` is the concatenation reference shared by
/// the parts.
pub fn split(text: &str, reference: u8) -> Result<Parts, SegmentError> {
    let gsm = Gsm7BitUnpacked::new();
    let (concatenation, data_coding, gsm7) = match gsm.concatenate(text, 160, 7) {
        Ok((c, dc)) => (c, dc, true),
        Err(_) => (utf16(text), DataCoding::Ucs2, false),
    };
    let parts = match concatenation {
        Concatenation::Single(p) => vec![p],
        Concatenation::Concatenated(ps) => {
            let total =
                u8::try_from(ps.len()).map_err(|_| SegmentError("more than 255 parts".into()))?;
            ps.into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut v = vec![0x05, 0x00, 0x03, reference, total, (i + 1) as u8];
                    v.extend_from_slice(&p);
                    v
                })
                .collect()
        }
    };
    Ok(Parts {
        data_coding,
        gsm7,
        parts,
    })
}

/// UTF-16BE, 70 units in one message, else parts of at most 67 units
/// cut only between characters.
fn utf16(text: &str) -> Concatenation {
    let units: usize = text.encode_utf16().count();
    if units <= 70 {
        return Concatenation::Single(text.encode_utf16().flat_map(u16::to_be_bytes).collect());
    }
    let mut parts = vec![Vec::new()];
    let mut buf = [0u16; 2];
    for c in text.chars() {
        let enc = c.encode_utf16(&mut buf);
        let last = parts.len() - 1;
        if parts[last].len() + 2 * enc.len() > 134 {
            parts.push(Vec::new());
        }
        let last = parts.len() - 1;
        parts[last].extend(enc.iter().flat_map(|u| u.to_be_bytes()));
    }
    Concatenation::Concatenated(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payloads(p: &Parts) -> Vec<&[u8]> {
        if p.parts.len() == 1 {
            vec![&p.parts[0][..]]
        } else {
            p.parts.iter().map(|v| &v[6..]).collect()
        }
    }

    #[test]
    fn boundaries_match_the_billing_count() {
        for (text, n) in [
            ("a".repeat(160), 1),
            ("a".repeat(161), 2),
            ("a".repeat(306), 2),
            ("a".repeat(307), 3),
            ("字".repeat(70), 1),
            ("字".repeat(71), 2),
            ("字".repeat(134), 2),
            ("字".repeat(135), 3),
        ] {
            let p = split(&text, 7).unwrap();
            assert_eq!(p.parts.len(), n, "{}", text.len());
            assert_eq!(
                p.parts.len() as u32,
                sms_core::sending::segments(&text).count
            );
        }
        let p = split(&"字".repeat(71), 9).unwrap();
        assert_eq!(p.data_coding, DataCoding::Ucs2);
        assert_eq!(&p.parts[1][..6], &[5, 0, 3, 9, 2, 2]);
    }

    #[test]
    fn escape_at_a_boundary_moves_to_the_next_part() {
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(20));
        let p = split(&text, 1).unwrap();
        assert!(p.gsm7);
        let pl = payloads(&p);
        assert_eq!(pl[0].len(), 152);
        assert_eq!(pl[1][0], 0x1B);
    }

    proptest! {
        #[test]
        fn gsm7_escapes_never_split(s in "[a-z€\\[\\]{}^~|\\\\ ]{0,700}") {
            let p = split(&s, 3).unwrap();
            prop_assert!(p.gsm7);
            let pl = payloads(&p);
            let mut all = Vec::new();
            for (i, part) in pl.iter().enumerate() {
                let cap = if pl.len() == 1 { 160 } else { 153 };
                prop_assert!(part.len() <= cap);
                if i + 1 < pl.len() {
                    prop_assert_ne!(part.last().copied(), Some(0x1B));
                }
                all.extend_from_slice(part);
            }
            let septets: usize = sms_core::sending::segments(&s).units;
            prop_assert_eq!(all.len(), septets);
        }

        #[test]
        fn ucs2_surrogate_pairs_never_split(s in "[a-z字😀🎉é]{1,400}") {
            let p = split(&s, 4).unwrap();
            if p.gsm7 {
                prop_assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == 'é'));
                return Ok(());
            }
            let pl = payloads(&p);
            let mut text = String::new();
            for part in &pl {
                let cap = if pl.len() == 1 { 140 } else { 134 };
                prop_assert!(part.len() <= cap);
                let units: Vec<u16> = part.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
                // Each part decodes on its own: no surrogate pair was cut.
                let piece = String::from_utf16(&units);
                prop_assert!(piece.is_ok());
                text.push_str(&piece.unwrap_or_default());
            }
            prop_assert_eq!(text, s);
        }
    }
}
