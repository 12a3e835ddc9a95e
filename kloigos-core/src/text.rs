//! Types written in files as strings (names, CPU lists, port ranges,
//! booking ids, durations): deserialized straight from the text serde
//! hands over, without copying it into a `String` first. The login gate
//! parses a few dozen of these at every login.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

use crate::error::Result;

/// Writes `$t` in files as its `Display` text and reads it back with
/// `$parse`, naming what was `$expecting` when the text does not parse.
macro_rules! serde_as_text {
    ($t:ty, $expecting:expr, $parse:expr) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                $crate::text::from_str(d, $expecting, $parse)
            }
        }
    };
}
pub(crate) use serde_as_text;

/// Deserializes a `T` written as a string, with `parse`.
pub(crate) fn from_str<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T>,
) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    d.deserialize_str(Parse::new(expecting, parse, None))
}

/// [`from_str`] that also takes a bare whole number, with `secs`.
pub(crate) fn from_str_or_u64<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T>,
    secs: fn(u64) -> Result<T>,
) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    d.deserialize_any(Parse::new(expecting, parse, Some(secs)))
}

struct Parse<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T>,
    secs: Option<fn(u64) -> Result<T>>,
    _t: PhantomData<T>,
}

impl<T> Parse<T> {
    fn new(
        expecting: &'static str,
        parse: fn(&str) -> Result<T>,
        secs: Option<fn(u64) -> Result<T>>,
    ) -> Parse<T> {
        Parse {
            expecting,
            parse,
            secs,
            _t: PhantomData,
        }
    }
}

impl<T> Visitor<'_> for Parse<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<T, E> {
        match self.secs {
            Some(secs) => secs(v).map_err(E::custom),
            None => Err(E::invalid_type(de::Unexpected::Unsigned(v), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::booking::BookingId;
    use crate::cpuset::CpuSet;
    use crate::duration::Dur;
    use crate::names::NodeName;

    #[test]
    fn strings_parse_with_escapes_and_errors_name_the_value() {
        // An escaped string is handed over from serde's scratch buffer.
        let n: NodeName = serde_json::from_str(r#""node\u0031""#).unwrap();
        assert_eq!(n.as_str(), "node1");
        let e = serde_json::from_str::<NodeName>(r#""../etc""#).unwrap_err();
        assert!(e.to_string().contains("node name"), "{e}");
        let e = serde_json::from_str::<NodeName>("3").unwrap_err();
        assert!(e.to_string().contains("a node name"), "{e}");
        let c: CpuSet = serde_json::from_str(r#""0-3,8""#).unwrap();
        assert_eq!(c.to_string(), "0-3,8");
        let b: BookingId = serde_json::from_str(r#""n1:7""#).unwrap();
        assert_eq!(b.to_string(), "n1:7");
    }

    #[test]
    fn durations_take_text_or_seconds() {
        let d: Dur = serde_json::from_str(r#""1h30m""#).unwrap();
        assert_eq!(d.secs(), 5400);
        let d: Dur = serde_json::from_str("90").unwrap();
        assert_eq!(d.secs(), 90);
        assert!(serde_json::from_str::<Dur>("true").is_err());
        assert!(serde_json::from_str::<Dur>(r#""soon""#).is_err());
    }
}
