//! Bearer tokens: 256 random bits, shown once, stored only as a SHA-256 hash.

use sha2::{Digest, Sha256};

use crate::engine::TokenHash;

pub const AGENT_TOKEN_PREFIX: &str = "mca_";
pub const GATEWAY_TOKEN_PREFIX: &str = "mcg_";

/// A new token and its hash.
pub fn mint(prefix: &str) -> (String, TokenHash) {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the operating system's random source");
    let mut token = String::with_capacity(prefix.len() + 64);
    token.push_str(prefix);
    for byte in secret {
        token.push_str(&format!("{byte:02x}"));
    }
    let hash = hash(&token);
    (token, hash)
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
}
