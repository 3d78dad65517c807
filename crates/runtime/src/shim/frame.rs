//! The shim's attach socket protocol (`attach.sock` in the container's directory): frames
//! of one kind byte, a big-endian u32 length and the payload, both ways. The runtime's
//! streaming server speaks it for `Attach`, and uses it to ask for a log reopen.

/// Client → shim: bytes for the container's stdin.
pub const STDIN: u8 = 0;
/// Shim → client: container output (a TTY container has only stdout).
pub const STDOUT: u8 = 1;
/// Shim → client: container stderr.
pub const STDERR: u8 = 2;
/// Client → shim: terminal size, width then height as big-endian u16s.
pub const RESIZE: u8 = 4;
/// Client → shim: reopen the CRI log file; the shim answers with an empty `REOPEN` once
/// the new file exists.
pub const REOPEN: u8 = 5;
/// Client → shim: send a signal (big-endian i32) to the container's init; the shim
/// answers with one byte, 1 if it was sent, 0 if the container has already exited.
pub const SIGNAL: u8 = 7;
/// Client → shim: attach; one payload byte of `WANT_*` bits.
pub const ATTACH: u8 = 6;
/// Client → shim: the client's input has ended (closes a `stdinOnce` container's stdin).
pub const CLOSE_STDIN: u8 = 255;

/// `ATTACH` bit: the client sends stdin.
pub const WANT_STDIN: u8 = 1;
/// `ATTACH` bit: the client wants stdout.
pub const WANT_STDOUT: u8 = 2;
/// `ATTACH` bit: the client wants stderr.
pub const WANT_STDERR: u8 = 4;

/// The largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// One encoded frame.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + payload.len());
    v.push(kind);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// The kind and payload length of a frame header; None if the length is too large.
pub fn header(h: [u8; 5]) -> Option<(u8, usize)> {
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    (len <= MAX_FRAME).then_some((h[0], len))
}

/// The socket's name inside the container's directory.
pub const SOCKET: &str = "attach.sock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let f = encode(STDOUT, b"hi");
        assert_eq!(f, vec![1, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(header(f[..5].try_into().unwrap()), Some((STDOUT, 2)));
        assert_eq!(header([0, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
