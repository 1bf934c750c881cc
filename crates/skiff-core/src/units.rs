//! Values users type on command lines and in files: sizes (`256m`),
//! durations (`30s`, `2m`, `500ms`, plain seconds), CPU counts (`0.5`),
//! port mappings (`8080:80`), container names.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} {value:?}: expected {expected}")]
pub struct UnitError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

fn err(what: &'static str, value: &str, expected: &'static str) -> UnitError {
    UnitError {
        what,
        value: value.to_string(),
        expected,
    }
}

/// `512`, `64k`, `256m`, `1g`, `1.5g`, `256MiB`, `256mb` → bytes (powers of 1024, as Docker).
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    const EXPECTED: &str = "a size such as 512k, 256m or 1g";
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(err("size", s, EXPECTED)),
    };
    let n: f64 = num.parse().map_err(|_| err("size", s, EXPECTED))?;
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(err("size", s, EXPECTED));
    }
    Ok(bytes as u64)
}

/// `30s`, `2m`, `1h`, `500ms`, `1m30s` or plain seconds (`30`, `0.5`).
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    const EXPECTED: &str = "a duration such as 30s, 2m, 500ms or plain seconds";
    let t = s.trim();
    if t.is_empty() {
        return Err(err("duration", s, EXPECTED));
    }
    if let Ok(secs) = t.parse::<f64>() {
        return if (0.0..1e9).contains(&secs) {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(err("duration", s, EXPECTED))
        };
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("duration", s, EXPECTED))?;
        let (num, tail) = rest.split_at(split);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let n: f64 = num.parse().map_err(|_| err("duration", s, EXPECTED))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(err("duration", s, EXPECTED)),
        };
        if !secs.is_finite() || secs >= 1e9 {
            return Err(err("duration", s, EXPECTED));
        }
        total += Duration::from_secs_f64(secs);
        rest = tail;
    }
    Ok(total)
}

/// `0.5`, `2` → millicpus; at least 0.01 CPU, at most 1024.
pub fn parse_cpus(s: &str) -> Result<u64, UnitError> {
    const EXPECTED: &str = "a number of CPUs such as 0.5 or 2";
    let n: f64 = s.trim().parse().map_err(|_| err("cpus", s, EXPECTED))?;
    if !n.is_finite() || !(0.01..=1024.0).contains(&n) {
        return Err(err("cpus", s, EXPECTED));
    }
    Ok((n * 1000.0).round() as u64)
}

/// A published port: `-p [IP:]HOST:CONTAINER[/tcp]` or `-p CONTAINER` (host port = container port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    pub host_ip: std::net::Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
}

pub fn parse_port_mapping(s: &str) -> Result<PortMapping, UnitError> {
    const EXPECTED: &str = "[127.0.0.1:]HOST:CONTAINER with ports 1-65535 (tcp)";
    let body = match s.split_once('/') {
        Some((b, "tcp")) => b,
        Some(_) => return Err(err("port mapping", s, EXPECTED)),
        None => s,
    };
    let parts: Vec<&str> = body.split(':').collect();
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(err("port mapping", s, EXPECTED)),
    };
    let (ip, host, ctr) = match parts.as_slice() {
        [c] => ("127.0.0.1", *c, *c),
        [h, c] => ("127.0.0.1", *h, *c),
        [ip, h, c] => (*ip, *h, *c),
        _ => return Err(err("port mapping", s, EXPECTED)),
    };
    let host_ip: std::net::Ipv4Addr = ip.parse().map_err(|_| err("port mapping", s, EXPECTED))?;
    Ok(PortMapping {
        host_ip,
        host_port: port(host)?,
        container_port: port(ctr)?,
    })
}

/// Container names as Docker allows them: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 128.
pub fn validate_container_name(s: &str) -> Result<(), UnitError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(err(
            "container name",
            s,
            "1-128 characters of [a-zA-Z0-9_.-], starting with a letter or digit",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert_eq!(parse_bytes("32m").unwrap(), 32 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        for bad in ["lots", "", "-1m", "0", "1x", "1e400"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        for bad in ["", "s", "10x", "-1", "abc", "1e12"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5").unwrap(), 500);
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("many").is_err());
    }

    #[test]
    fn ports() {
        let p = parse_port_mapping("8080:80").unwrap();
        assert_eq!((p.host_port, p.container_port), (8080, 80));
        assert_eq!(p.host_ip, std::net::Ipv4Addr::LOCALHOST);
        assert_eq!(parse_port_mapping("80").unwrap().host_port, 80);
        assert_eq!(
            parse_port_mapping("0.0.0.0:1:2/tcp").unwrap().host_ip,
            std::net::Ipv4Addr::UNSPECIFIED
        );
        for bad in ["99999:1", "0:80", "a:b", "1:2:3:4", "80/udp", ""] {
            assert!(parse_port_mapping(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_container_name("web-1.a_b").is_ok());
        assert!(validate_container_name("-x").is_err());
        assert!(validate_container_name("a/b").is_err());
        assert!(validate_container_name("").is_err());
    }
}
