//! Just enough STUN (RFC 8489) to route a datagram to its session before any session has seen
//! it: the USERNAME of a binding request is `<our ufrag>:<their ufrag>`, and our ufrag names the
//! session. Everything else about STUN (integrity, responses) is str0m's job.

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const HEADER: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;
/// RFC 8489 limits USERNAME to 513 bytes.
const MAX_USERNAME: usize = 513;

/// Whether `data` looks like a STUN message (RFC 7983 demultiplexing: first byte 0..=3, and the
/// magic cookie).
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= HEADER && data[0] < 4 && data[4..8] == MAGIC_COOKIE
}

/// Our ufrag from a binding request's USERNAME attribute, or None for anything else.
pub fn local_ufrag(data: &[u8]) -> Option<&str> {
    if !is_stun(data) {
        return None;
    }
    // Binding request: method 0x001, class request.
    if u16::from_be_bytes([data[0], data[1]]) != 0x0001 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(HEADER..HEADER + len)?;
    let mut pos = 0;
    while pos + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[pos], body[pos + 1]]);
        let alen = usize::from(u16::from_be_bytes([body[pos + 2], body[pos + 3]]));
        let value = body.get(pos + 4..pos + 4 + alen)?;
        if kind == ATTR_USERNAME {
            if alen > MAX_USERNAME {
                return None;
            }
            let user = std::str::from_utf8(value).ok()?;
            let (local, _remote) = user.split_once(':')?;
            return (!local.is_empty()).then_some(local);
        }
        pos += 4 + alen.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn finds_our_ufrag_after_other_attributes() {
        let m = request(&[(0x8022, b"agent"), (ATTR_USERNAME, b"abcd:wxyz")]);
        assert_eq!(local_ufrag(&m), Some("abcd"));
    }

    #[test]
    fn refuses_what_is_not_a_binding_request_with_a_username() {
        assert_eq!(local_ufrag(&request(&[(0x8022, b"x")])), None);
        assert_eq!(local_ufrag(&request(&[(ATTR_USERNAME, b"nocolon")])), None);
        let mut m = request(&[(ATTR_USERNAME, b"a:b")]);
        m[1] = 0x11; // a binding indication
        assert_eq!(local_ufrag(&m), None);
        // Truncated: the header claims more than there is.
        let m = request(&[(ATTR_USERNAME, b"abcd:wxyz")]);
        assert_eq!(local_ufrag(&m[..m.len() - 3]), None);
        // DTLS and RTP are not STUN.
        assert!(!is_stun(&[
            22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ]));
        assert!(!is_stun(&[0x80; 40]));
    }
}
