//! Operator credentials: who may call what. Tokens are kept as SHA-256
//! hashes only, here as everywhere else.
//!
//! The roles file, one credential per line (`#` starts a comment):
//!
//! ```text
//! # name       role    credential
//! dashboard    viewer  sha256:5e8848…42d8
//! ops          admin   sha256:9f86d0…0a08
//! ci-robot     admin   subject:CN=ci-robot,O=Example
//! ```
//!
//! `sha256:` is the hex SHA-256 of a bearer token (`mission-control
//! hash-token` prints it); `subject:` is a client certificate's subject, as
//! the TLS layer reports it, for mutual TLS.

use std::collections::HashMap;
use std::fmt;

use crate::engine::TokenHash;
use crate::runtime::tokens;

/// What an operator may do. `Admin` includes everything a `Viewer` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads, watch, history, list gateways, metrics.
    Viewer,
    /// Everything.
    Admin,
}

impl Role {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "viewer" => Some(Self::Viewer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        })
    }
}

/// One operator as the roles file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
}

/// A set of credentials: token hashes and certificate subjects, each with
/// the operator it stands for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    tokens: HashMap<TokenHash, Operator>,
    subjects: HashMap<String, Operator>,
}

impl Credentials {
    /// Parses a roles file. Errors name the line and never repeat a
    /// credential.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut credentials = Self::default();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.splitn(2, char::is_whitespace);
            let name = words.next();
            let mut rest = words
                .next()
                .unwrap_or("")
                .trim_start()
                .splitn(2, char::is_whitespace);
            let (Some(name), Some(role), Some(credential)) = (name, rest.next(), rest.next())
            else {
                return Err(format!(
                    "line {line_number}: expected `NAME ROLE sha256:HEX` or `NAME ROLE subject:SUBJECT`"
                ));
            };
            let role = Role::parse(role.trim()).ok_or_else(|| {
                format!("line {line_number}: the role must be `viewer` or `admin`")
            })?;
            let operator = Operator {
                name: name.to_owned(),
                role,
            };
            let credential = credential.trim();
            if let Some(hex) = credential.strip_prefix("sha256:") {
                let hash = parse_hash(hex).ok_or_else(|| {
                    format!("line {line_number}: a sha256 credential is 64 hex digits")
                })?;
                if credentials.tokens.insert(hash, operator).is_some() {
                    return Err(format!(
                        "line {line_number}: this token hash is listed twice"
                    ));
                }
            } else if let Some(subject) = credential.strip_prefix("subject:") {
                let subject = subject.trim();
                if subject.is_empty() {
                    return Err(format!("line {line_number}: the subject is empty"));
                }
                if credentials
                    .subjects
                    .insert(subject.to_owned(), operator)
                    .is_some()
                {
                    return Err(format!("line {line_number}: this subject is listed twice"));
                }
            } else {
                return Err(format!(
                    "line {line_number}: the credential must start with `sha256:` or `subject:`"
                ));
            }
        }
        Ok(credentials)
    }

    /// Adds `token` (trimmed) as an admin called `name`.
    pub fn with_admin_token(mut self, name: &str, token: &str) -> Self {
        self.tokens.insert(
            tokens::hash(token.trim()),
            Operator {
                name: name.to_owned(),
                role: Role::Admin,
            },
        );
        self
    }

    /// These credentials and `other`'s; `other` wins where both list one.
    pub fn merged(mut self, other: &Credentials) -> Self {
        self.tokens
            .extend(other.tokens.iter().map(|(k, v)| (*k, v.clone())));
        self.subjects
            .extend(other.subjects.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.subjects.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len() + self.subjects.len()
    }

    pub fn by_token(&self, token: &str) -> Option<&Operator> {
        self.tokens.get(&tokens::hash(token.trim()))
    }

    pub fn by_subject(&self, subject: &str) -> Option<&Operator> {
        self.subjects.get(subject)
    }
}

/// The line to put in a roles file for `token`.
pub fn hash_line(token: &str) -> String {
    let TokenHash(bytes) = tokens::hash(token.trim());
    let mut line = String::from("sha256:");
    tokens::push_hex(&mut line, &bytes);
    line
}

fn parse_hash(hex: &str) -> Option<TokenHash> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(TokenHash(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roles_file_maps_tokens_and_subjects_to_roles() {
        let text = format!(
            "# dashboards only watch\n\
             dashboard viewer {}\n\
             \n\
             ops   admin  {}   # the on-call team\n\
             robot admin subject:CN=robot,O=Example\n",
            hash_line("view-secret"),
            hash_line("admin-secret"),
        );
        let credentials = Credentials::parse(&text).unwrap();
        assert_eq!(credentials.len(), 3);
        assert_eq!(
            credentials.by_token("view-secret").unwrap(),
            &Operator {
                name: "dashboard".into(),
                role: Role::Viewer
            }
        );
        assert_eq!(
            credentials.by_token("admin-secret\n").unwrap().role,
            Role::Admin
        );
        assert!(credentials.by_token("nope").is_none());
        assert_eq!(
            credentials.by_subject("CN=robot,O=Example").unwrap().role,
            Role::Admin
        );
        assert!(Role::Admin > Role::Viewer);
    }

    #[test]
    fn bad_lines_are_named_and_never_echo_the_credential() {
        let secret_hash = hash_line("s3cret");
        let cases = [
            (format!("a superuser {secret_hash}"), "line 1: the role"),
            ("a viewer".to_owned(), "line 1: expected"),
            (
                "\na viewer sha256:abc".to_owned(),
                "line 2: a sha256 credential",
            ),
            (
                format!("a viewer {}", &secret_hash[7..]),
                "line 1: the credential must start",
            ),
            (
                format!("a viewer {secret_hash}\nb admin {secret_hash}"),
                "line 2: this token hash is listed twice",
            ),
            (
                "a viewer subject: ".to_owned(),
                "line 1: the subject is empty",
            ),
        ];
        for (text, expected) in cases {
            let error = Credentials::parse(&text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
            assert!(!error.contains(&secret_hash[7..]), "{error}");
        }
    }

    #[test]
    fn the_hash_line_is_the_sha256_of_the_trimmed_token() {
        // sha256("test"), a well-known value.
        assert_eq!(
            hash_line("test\n"),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
