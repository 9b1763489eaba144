//! ListUsers (user.v2) page tokens: a [`ListPosition`] signed with the database's
//! `page_token` key (HMAC-SHA256), URL-safe base64 without padding. Opaque to clients; a token
//! this service did not issue, or one altered, is refused naming `page_token`. Pure: the key is
//! handed in.
//!
//! Layout (57 bytes, 76 characters): format `1`, `created` (i64, big-endian), tie-break (u128,
//! big-endian), then the HMAC of those 25 bytes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use crate::domain::{FieldViolation, ListPosition};

/// The request field a token arrives in.
pub const FIELD: &str = "page_token";

const FORMAT: u8 = 1;
const BODY_LEN: usize = 1 + 8 + 16;
const TAG_LEN: usize = 32;

/// Issues and reads page tokens under one key.
pub struct PageTokens {
    key: hmac::Key,
}

impl PageTokens {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn issue(&self, position: ListPosition) -> String {
        let mut token = Vec::with_capacity(BODY_LEN + TAG_LEN);
        token.push(FORMAT);
        token.extend_from_slice(&position.created.to_be_bytes());
        token.extend_from_slice(&position.tiebreak.to_be_bytes());
        let tag = hmac::sign(&self.key, &token);
        token.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The position a token names; a violation of `page_token` for anything else.
    pub fn read(&self, token: &str) -> Result<ListPosition, FieldViolation> {
        let malformed = || FieldViolation::new(FIELD, "is not a page token (malformed)");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
        if bytes.len() != BODY_LEN + TAG_LEN || bytes[0] != FORMAT {
            return Err(malformed());
        }
        let (body, tag) = bytes.split_at(BODY_LEN);
        hmac::verify(&self.key, body, tag).map_err(|_| {
            FieldViolation::new(
                FIELD,
                "was not issued by this service (altered, or from another database)",
            )
        })?;
        let created = i64::from_be_bytes(body[1..9].try_into().map_err(|_| malformed())?);
        let tiebreak = u128::from_be_bytes(body[9..].try_into().map_err(|_| malformed())?);
        Ok(ListPosition { created, tiebreak })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSITION: ListPosition = ListPosition {
        created: 1_764_547_200_123_456,
        tiebreak: 0x7f1c_6a9e_8d36_4f43_9a8e_0b7c_6a6d_2f11,
    };

    #[test]
    fn a_token_reads_back_as_its_position() {
        let tokens = PageTokens::new(b"a key of thirty-two bytes, or so");
        let token = tokens.issue(POSITION);
        assert_eq!(token.len(), 76);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "URL-safe: {token}"
        );
        assert_eq!(tokens.read(&token), Ok(POSITION));
    }

    #[test]
    fn an_altered_token_is_refused() {
        let tokens = PageTokens::new(b"key one");
        let mut bytes = URL_SAFE_NO_PAD.decode(tokens.issue(POSITION)).unwrap();
        // Move the position by one microsecond, keeping the old tag.
        bytes[8] ^= 1;
        let forged = URL_SAFE_NO_PAD.encode(&bytes);
        let violation = tokens.read(&forged).unwrap_err();
        assert_eq!(violation.field, "page_token");
        assert!(
            violation.description.contains("not issued"),
            "{violation:?}"
        );
    }

    #[test]
    fn a_token_under_another_key_is_refused() {
        let token = PageTokens::new(b"database A").issue(POSITION);
        let violation = PageTokens::new(b"database B").read(&token).unwrap_err();
        assert_eq!(violation.field, "page_token");
    }

    #[test]
    fn garbage_is_malformed() {
        let tokens = PageTokens::new(b"key");
        let valid = tokens.issue(POSITION);
        for bad in [
            "not base64!",
            "AAAA",
            &valid[..valid.len() - 4],
            &format!("{valid}AA"),
            // Padded base64 is not the issued form.
            &format!("{valid}="),
        ] {
            let violation = tokens.read(bad).unwrap_err();
            assert_eq!(violation.field, "page_token", "{bad:?}");
            assert!(violation.description.contains("malformed"), "{bad:?}");
        }
        let mut wrong_format = URL_SAFE_NO_PAD.decode(&valid).unwrap();
        wrong_format[0] = 2;
        assert!(
            tokens
                .read(&URL_SAFE_NO_PAD.encode(&wrong_format))
                .unwrap_err()
                .description
                .contains("malformed")
        );
    }
}
