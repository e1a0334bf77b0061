//! Password hashes: argon2id in PHC strings, verified in constant time, with the same work done
//! for unknown users so a login's timing does not tell who exists.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Hashes `password` with argon2id (the crate's default parameters) and a random salt.
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks that `hash` is a PHC string argon2 can verify against.
pub fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| format!("is not a PHC string: {e}"))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "uses `{}`; only argon2 hashes are accepted",
            parsed.algorithm
        ));
    }
    Ok(())
}

/// True when `password` matches `hash`. A missing or unreadable hash is verified against a
/// dummy hash anyway (and fails), so the time taken does not reveal whether the user exists.
pub fn verify(hash: Option<&str>, password: &str) -> bool {
    let parsed = hash.and_then(|h| PasswordHash::new(h).ok());
    match parsed {
        Some(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        None => {
            let dummy = dummy_hash();
            if let Ok(parsed) = PasswordHash::new(dummy) {
                let _ = Argon2::default().verify_password(password.as_bytes(), &parsed);
            }
            false
        }
    }
}

/// A hash of a random password, computed once, for [`verify`] of unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random: [u8; 16] = rand::random();
        hash(&format!("{random:?}")).unwrap_or_default()
    })
}

/// A random password for a new user: 20 characters from an unambiguous alphabet (~115 bits).
pub fn generate() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::with_capacity(20);
    for _ in 0..20 {
        // Rejection sampling keeps every character equally likely.
        loop {
            let b: u8 = rand::random();
            let limit = 256 - (256 % ALPHABET.len());
            if (b as usize) < limit {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        check_hash(&h).unwrap();
        assert!(verify(Some(&h), "correct horse"));
        assert!(!verify(Some(&h), "battery staple"));
        assert!(!verify(None, "correct horse"));
        assert!(!verify(Some("garbage"), "correct horse"));
        assert!(check_hash("garbage").is_err());
    }

    #[test]
    fn generated_passwords_differ() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
    }
}
