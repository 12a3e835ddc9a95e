//! Sizes as admins type them: `16G`, `512M`, `1T`, `4k`, `1024` (bytes).
//! Units are binary (K = 1024 bytes), as the kernel's memory limits count.

use crate::error::{Error, Result};

const FORMS: &str = "give bytes or a number with K, M, G or T, like 16G";

/// Parses a positive size in bytes; the suffix is K, M, G or T in either
/// case. Zero, an unknown suffix and sizes beyond `u64` are refused with an
/// error that quotes the text.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => 0,
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && mult > 0)
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| Error::invalid("size", text, FORMS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("16G").unwrap(), 16 << 30);
        assert_eq!(parse_size("16g").unwrap(), 16 << 30);
        assert_eq!(parse_size(" 1T ").unwrap(), 1 << 40);
        assert_eq!(parse_size("16777215T").unwrap(), 16_777_215 << 40);
    }

    #[test]
    fn refuses_with_the_forms() {
        for bad in [
            "",
            "0",
            "0G",
            "G",
            "16X",
            "16 G",
            "-1",
            "1.5G",
            "16GB",
            "16777216T",
        ] {
            let e = parse_size(bad).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("'{bad}'")) && msg.contains("like 16G"),
                "{bad}: {msg}"
            );
        }
    }
}
