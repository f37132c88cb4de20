//! Value types shared by every config file: humantime durations, byte sizes
//! and `host:port` lists.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Serde adapter for humantime durations (`30s`, `10m`, `1h 30m`).
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(de::Error::custom)
    }

    /// The longest duration any setting accepts: far beyond every sensible
    /// value, and far below what would overflow a deadline computed from it.
    pub const MAX: Duration = Duration::from_secs(10 * 365 * 86_400);

    pub fn parse(text: &str) -> Result<Duration, String> {
        let duration = humantime::parse_duration(text.trim())
            .map_err(|_| format!("invalid duration `{text}`, expected a duration such as `30s`, `10m` or `1h 30m`"))?;
        if duration > MAX {
            return Err(format!("duration `{text}` is too long, expected at most 10 years"));
        }
        Ok(duration)
    }
}

/// Serde adapter for an optional humantime duration.
pub mod option_duration {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => super::duration::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(deserializer).map(Some)
    }
}

/// A number of bytes, written either as an integer or as a string with a unit
/// (`512KiB`, `64MiB`, `2GiB`, `1GB`). Negative sizes are refused when parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        ByteSize(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
    pub const fn gib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024 * 1024)
    }
    pub fn as_u64(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "a size such as `512KiB`, `64MiB`, `2GiB` or a number of bytes";
        let trimmed = text.trim();
        let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return Err(format!("invalid size `{text}`, expected {expected}")),
        };
        let value: f64 = number.parse().map_err(|_| format!("invalid size `{text}`, expected {expected}"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(format!("size `{text}` is too large"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (name, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as `64MiB` or a non-negative number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("negative size {v}, expected a size greater than zero")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                if v.trim_start().starts_with('-') {
                    return Err(E::custom(format!("negative size `{v}`, expected a size greater than zero")));
                }
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// One `host:port` of a server list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses a comma-separated `host:port` list, the shape shared by ZooKeeper
/// connect strings and Kafka bootstrap servers. IPv6 hosts go in brackets.
pub fn parse_host_ports(text: &str) -> Result<Vec<HostPort>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.split(',').enumerate() {
        let item = raw.trim();
        let bad = |why: &str| format!("server {} `{item}` {why}", i + 1);
        if item.is_empty() {
            return Err(bad("is empty"));
        }
        let (host, port) = if let Some(rest) = item.strip_prefix('[') {
            let (host, rest) = rest.split_once(']').ok_or_else(|| bad("has an unclosed `[`"))?;
            (host, rest.strip_prefix(':').ok_or_else(|| bad("has no `:port`"))?)
        } else {
            item.rsplit_once(':').ok_or_else(|| bad("has no `:port`"))?
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        if host.contains('/') {
            return Err(bad("contains `/` (a chroot path goes in the `root` field)"));
        }
        if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')) {
            return Err(bad("has a host with characters outside letters, digits, `.`, `-`, `_`"));
        }
        let port: u16 = port.parse().map_err(|_| bad("has a port that is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("has port 0"));
        }
        out.push(HostPort { host: host.to_string(), port });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("64MiB").unwrap(), ByteSize::mib(64));
        assert_eq!(ByteSize::parse("1.5 KiB").unwrap(), ByteSize(1536));
        assert_eq!(ByteSize::parse("2GB").unwrap(), ByteSize(2_000_000_000));
        assert_eq!(ByteSize::parse("100").unwrap(), ByteSize(100));
        assert!(ByteSize::parse("10 parsecs").is_err());
        assert!(ByteSize::parse("MiB").is_err());
        assert_eq!(ByteSize::mib(256).to_string(), "256MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn host_port_lists() {
        let hosts = parse_host_ports("zk1:2181, zk2.example.com:2182,[::1]:2183").unwrap();
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[1].host, "zk2.example.com");
        assert_eq!(hosts[2].to_string(), "[::1]:2183");
        for bad in
            ["", "zk1", "zk1:", "zk1:0", "zk1:70000", "zk1:2181,,zk2:2181", ":2181", "zk1:2181/chroot", "zk 1:2181"]
        {
            assert!(parse_host_ports(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration::parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(duration::parse("-5s").is_err());
        assert!(duration::parse("soon").is_err());
    }
}
