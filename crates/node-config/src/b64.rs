//! Standard base64 (RFC 4648, with or without padding, whitespace
//! ignored) for `write_files` with `encoding: b64`.

fn value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let chars: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let data_len = chars.iter().rposition(|&c| c != b'=').map_or(0, |p| p + 1);
    let pad = chars.len() - data_len;
    if pad > 2 || (pad > 0 && chars.len() % 4 != 0) {
        return Err("bad '=' padding".into());
    }
    if data_len % 4 == 1 {
        return Err("length is not a valid base64 length".into());
    }
    let mut out = Vec::with_capacity(data_len * 3 / 4);
    for (n, chunk) in chars[..data_len].chunks(4).enumerate() {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = value(c)
                .ok_or_else(|| format!("character {:?} at position {}", c as char, n * 4 + i))?;
            acc |= v << (18 - 6 * i);
        }
        let bytes = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn rfc4648_vectors() {
        for (enc, dec) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
            ("Zm9vYmE", "fooba"),
            ("Zm9v\nYmFy\n", "foobar"),
        ] {
            assert_eq!(decode(enc).unwrap(), dec.as_bytes(), "{enc}");
        }
        assert!(decode("Z").is_err());
        assert!(decode("Zm9v!").is_err());
        assert!(decode("Zg===").is_err());
        assert!(decode("Zg=x").is_err());
    }
}
