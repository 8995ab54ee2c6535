//! PEM in and out, and a private-key string that keeps itself out of logs.
//!
//! Decoding is x509-parser's; encoding is the few lines below, so the crate needs no extra
//! dependency just to wrap DER in base64.

use std::fmt;

use x509_parser::pem::Pem;

pub(crate) const CERTIFICATE: &str = "CERTIFICATE";
pub(crate) const PRIVATE_KEY: &str = "PRIVATE KEY";

/// A PKCS#8 private key in PEM. `Debug` does not print it, so a stray `{:?}` cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    pub(crate) fn new(pem: String) -> Self {
        Self(pem)
    }

    /// The PEM text, to write to a file with mode 0600 or hand to a TLS stack.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// Every PEM block in `text`, in order. A block that is present but broken is an error
/// (described in words) rather than skipped, so a truncated bundle is noticed.
pub(crate) fn blocks(text: &[u8]) -> Result<Vec<Pem>, String> {
    Pem::iter_from_buffer(text).map(|block| block.map_err(|error| format!("bad PEM block: {error}"))).collect()
}

/// The DER of every `CERTIFICATE` block in `text`; other blocks are ignored.
pub(crate) fn certificates(text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    Ok(blocks(text)?.into_iter().filter(|block| block.label == CERTIFICATE).map(|block| block.contents).collect())
}

/// `der` as one PEM block with 64-column lines, as OpenSSL writes it.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let body = base64(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Several certificates as concatenated PEM, in the order given.
pub(crate) fn encode_certificates<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    ders.into_iter().map(|der| encode(CERTIFICATE, der)).collect()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let sextets = [n >> 18, n >> 12, n >> 6, n];
        for (i, sextet) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(sextet & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Lowercase hex of a big-endian unsigned integer without leading zero bytes, e.g. a serial.
pub(crate) fn hex_unsigned(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len().saturating_sub(1));
    bytes[start..].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base64_pads_like_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn private_key_pem_debug_does_not_print_the_key() {
        let key = PrivateKeyPem::new("-----BEGIN PRIVATE KEY-----\nsecret\n".to_owned());
        assert!(!format!("{key:?}").contains("secret"));
    }

    #[test]
    fn serial_hex_drops_leading_zero_bytes_but_keeps_a_lone_zero() {
        assert_eq!(hex_unsigned(&[0, 0, 0x7f, 0x01]), "7f01");
        assert_eq!(hex_unsigned(&[0, 0]), "00");
    }

    proptest! {
        #[test]
        fn encoded_pem_decodes_to_the_same_bytes(der in proptest::collection::vec(any::<u8>(), 0..600)) {
            let pem = encode(CERTIFICATE, &der);
            let decoded = certificates(pem.as_bytes()).unwrap();
            prop_assert_eq!(decoded, vec![der]);
        }
    }
}
