//! Bearer tokens: 256 random bits, shown once, stored only as a SHA-256 hash.

use sha2::{Digest, Sha256};

use crate::engine::TokenHash;

pub const AGENT_TOKEN_PREFIX: &str = "mca_";
pub const GATEWAY_TOKEN_PREFIX: &str = "mcg_";

/// A new token and its hash.
pub fn mint(prefix: &str) -> (String, TokenHash) {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the operating system's random source");
    let mut token = String::with_capacity(prefix.len() + 2 * secret.len());
    token.push_str(prefix);
    push_hex(&mut token, &secret);
    let hash = hash(&token);
    (token, hash)
}

/// Appends `bytes` as lowercase hex. By table: a `format!` per byte was a
/// sixth of a Provision's CPU.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(2 * bytes.len());
    for byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
}

pub fn hash(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_distinct_and_hash_to_their_hash() {
        let (a, hash_a) = mint(AGENT_TOKEN_PREFIX);
        let (b, _) = mint(AGENT_TOKEN_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with("mca_") && a.len() == 68);
        assert_eq!(hash(&a), hash_a);
        assert_ne!(hash(&b), hash_a);
    }

    #[test]
    fn a_minted_token_is_its_prefix_and_lowercase_hex() {
        let (token, _) = mint(GATEWAY_TOKEN_PREFIX);
        let secret = token.strip_prefix("mcg_").expect("the prefix");
        assert_eq!(secret.len(), 64);
        assert!(
            secret
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        // 256 random bits: every nibble value shows up in a few tokens.
        let seen: std::collections::BTreeSet<char> = (0..8)
            .flat_map(|_| mint(AGENT_TOKEN_PREFIX).0[4..].chars().collect::<Vec<_>>())
            .collect();
        assert_eq!(seen.len(), 16);
    }
}
