//! A client certificate's subject as text, for the roles file's
//! `subject:` credentials. RFC 4514 form, most specific first, as
//! `openssl x509 -noout -subject -nameopt RFC2253` prints it, e.g.
//! `CN=ci-robot,O=Example,C=US`.
//!
//! Only the certificate's structure is read here: the TLS layer has
//! already verified the chain against `--tls-client-ca`.

/// The subject of a DER-encoded X.509 certificate.
pub fn subject(certificate: &[u8]) -> Option<String> {
    let (SEQUENCE, certificate, _) = tlv(certificate)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == VERSION {
        rest = after;
    }
    // serial number, signature algorithm, issuer, validity, then subject
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, name, _) = tlv(rest)? else {
        return None;
    };
    render_name(name)
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION: u8 = 0xA0;

/// Tag, content and what follows, of the first DER element of `input`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let length = if first < 0x80 {
        first as usize
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, rest) = input.split_at(count);
        input = rest;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | b as usize)
    };
    if input.len() < length {
        return None;
    }
    let (content, rest) = input.split_at(length);
    Some((tag, content, rest))
}

fn render_name(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (SET, mut set, rest) = tlv(name)? else {
            return None;
        };
        name = rest;
        let mut attributes = Vec::new();
        while !set.is_empty() {
            let (SEQUENCE, attribute, rest) = tlv(set)? else {
                return None;
            };
            set = rest;
            let (OID, oid, value) = tlv(attribute)? else {
                return None;
            };
            attributes.push(format!("{}={}", attribute_name(oid)?, render_value(value)?));
        }
        rdns.push(attributes.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn attribute_name(oid: &[u8]) -> Option<String> {
    let dotted = dotted(oid)?;
    let short = match dotted.as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return Some(dotted),
    };
    Some(short.to_owned())
}

fn dotted(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for &byte in oid {
        value = value.checked_mul(128)? | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    if arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// A string value, escaped as RFC 4514 says; anything else as `#` and the
/// hex of its DER encoding.
fn render_value(encoded: &[u8]) -> Option<String> {
    let (tag, content, _) = tlv(encoded)?;
    let text = match tag {
        // UTF8String, PrintableString, IA5String
        0x0C | 0x13 | 0x16 => std::str::from_utf8(content).ok()?.to_owned(),
        // TeletexString, read as Latin-1
        0x14 => content.iter().map(|&b| b as char).collect(),
        // BMPString
        0x1E if content.len() % 2 == 0 => {
            let units: Vec<u16> = content
                .chunks(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).ok()?
        }
        _ => {
            let mut hex = String::from("#");
            crate::runtime::tokens::push_hex(&mut hex, encoded);
            return Some(hex);
        }
    };
    Some(escape(&text))
}

fn escape(text: &str) -> String {
    let last = text.chars().count().saturating_sub(1);
    let mut escaped = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if content.len() < 0x80 {
            out.push(content.len() as u8);
        } else {
            let length = (content.len() as u32).to_be_bytes();
            let skip = length.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | (4 - skip) as u8);
            out.extend_from_slice(&length[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    fn attribute(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        der(SEQUENCE, &[der(OID, oid), der(tag, value)].concat())
    }

    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0A];
    const C: &[u8] = &[0x55, 0x04, 0x06];

    /// A certificate with this subject; everything else is a placeholder.
    fn certificate(subject: &[u8], with_version: bool) -> Vec<u8> {
        let issuer = der(SEQUENCE, &der(SET, &attribute(CN, 0x0C, b"Test CA")));
        let algorithm = der(
            SEQUENCE,
            &der(OID, &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02]),
        );
        let validity = der(
            SEQUENCE,
            &[der(0x17, b"260101000000Z"), der(0x17, b"270101000000Z")].concat(),
        );
        let key = der(SEQUENCE, &[algorithm.clone(), der(0x03, &[0; 33])].concat());
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend(der(VERSION, &der(0x02, &[2])));
        }
        for part in [
            der(0x02, &[0x01, 0x23]),
            algorithm.clone(),
            issuer,
            validity,
            der(SEQUENCE, subject),
            key,
        ] {
            tbs.extend(part);
        }
        let signature = der(0x03, &[0; 300]);
        der(
            SEQUENCE,
            &[der(SEQUENCE, &tbs), algorithm, signature].concat(),
        )
    }

    #[test]
    fn the_subject_reads_most_specific_first() {
        let name = [
            der(SET, &attribute(C, 0x13, b"US")),
            der(SET, &attribute(O, 0x0C, b"Example, Inc.")),
            der(SET, &attribute(CN, 0x0C, b"ci-robot")),
        ]
        .concat();
        for with_version in [true, false] {
            assert_eq!(
                subject(&certificate(&name, with_version)).as_deref(),
                Some("CN=ci-robot,O=Example\\, Inc.,C=US")
            );
        }
    }

    #[test]
    fn multi_valued_and_unusual_attributes_render() {
        let uid = [0x09, 0x92, 0x26, 0x89, 0x93, 0xF2, 0x2C, 0x64, 0x01, 0x01];
        let name = [
            der(
                SET,
                &[
                    attribute(CN, 0x1E, &[0, b'b', 0, b'o', 0, b't']),
                    attribute(&uid, 0x0C, b"7"),
                ]
                .concat(),
            ),
            der(SET, &attribute(&[0x2A, 0x03], 0x04, &[0xAB])),
        ]
        .concat();
        assert_eq!(
            subject(&certificate(&name, true)).as_deref(),
            Some("1.2.3=#0401ab,CN=bot+UID=7")
        );
        assert_eq!(escape(" #lead+trail "), "\\ #lead\\+trail\\ ");
    }

    #[test]
    fn garbage_is_no_subject() {
        assert_eq!(subject(&[]), None);
        assert_eq!(subject(&[0x30, 0x82, 0xFF]), None);
        let cert = certificate(&der(SET, &attribute(CN, 0x0C, b"x")), true);
        assert_eq!(subject(&cert[..cert.len() / 2]), None);
    }
}
