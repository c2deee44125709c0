//! Standard Base64 with padding (RFC 4648 section 4): the CloudEvents JSON
//! format's `data_base64`.

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard Base64 with padding (RFC 4648 section 4).
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64_ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard Base64 with padding; errors name the first bad byte.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let b = text.as_bytes();
    if !b.len().is_multiple_of(4) {
        return Err(format!(
            "{} characters, not a multiple of 4 (padding with `=` is required)",
            b.len()
        ));
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (q, quad) in b.chunks(4).enumerate() {
        let last = (q + 1) * 4 == b.len();
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err(format!(
                "misplaced `=` in characters {}..{}",
                q * 4,
                q * 4 + 4
            ));
        }
        let mut n: u32 = 0;
        for (i, &c) in quad[..4 - pad].iter().enumerate() {
            let v = BASE64_ALPHABET
                .iter()
                .position(|&a| a == c)
                .ok_or_else(|| {
                    format!("character {} ({:?}) is not Base64", q * 4 + i, c as char)
                })?;
            n |= (v as u32) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output);
            assert_eq!(base64_decode(output).unwrap(), input.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64(&all)).unwrap(), all);
    }

    #[test]
    fn base64_decode_names_what_is_wrong() {
        assert!(base64_decode("Zm9").unwrap_err().contains("multiple of 4"));
        assert!(
            base64_decode("Zm9v!A==")
                .unwrap_err()
                .contains("character 4")
        );
        assert!(base64_decode("Zg==Zm9v").unwrap_err().contains("misplaced"));
        assert!(base64_decode("Z===").unwrap_err().contains("misplaced"));
    }
}
