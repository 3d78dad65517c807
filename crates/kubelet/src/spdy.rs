//! SPDY/3.1 framing, as kubectl's port-forward speaks it (directly after an HTTP upgrade,
//! or tunneled inside WebSocket binary messages): control and data frames, and header
//! blocks compressed with zlib and the protocol's preset dictionary.

use crate::error::FrameError;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

const VERSION: u16 = 3;
/// The FIN flag: the sender's last frame on the stream.
pub const FLAG_FIN: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// Frames larger than this are refused (kubectl's data frames are 32 KiB at most).
const MAX_FRAME: usize = 4 << 20;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// DATA.
    Data {
        /// The stream.
        stream: u32,
        /// The last frame of the stream.
        fin: bool,
        /// The payload.
        data: Bytes,
    },
    /// SYN_STREAM: the client opens a stream.
    SynStream {
        /// The stream.
        stream: u32,
        /// The last frame of the stream.
        fin: bool,
        /// Its headers.
        headers: Vec<(String, String)>,
    },
    /// SYN_REPLY.
    SynReply {
        /// The stream.
        stream: u32,
        /// The last frame of the stream.
        fin: bool,
        /// Its headers.
        headers: Vec<(String, String)>,
    },
    /// RST_STREAM: a stream ends abnormally.
    RstStream {
        /// The stream.
        stream: u32,
        /// The status code.
        status: u32,
    },
    /// PING.
    Ping(u32),
    /// GOAWAY: the session ends.
    GoAway {
        /// The last stream accepted.
        last: u32,
        /// The status code.
        status: u32,
    },
    /// SETTINGS, HEADERS, WINDOW_UPDATE and unknown types: nothing to do for us.
    Ignored(u16),
}

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): length-prefixed
/// header names and values, then a run of common status texts and values.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
        "charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1424);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// Decodes frames from a byte stream; owns the connection's header decompressor.
pub struct Decoder {
    buf: BytesMut,
    inflate: Decompress,
    dict: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: BytesMut::new(),
            inflate: Decompress::new(true),
            dict: dictionary(),
        }
    }
}

impl Decoder {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, None if more bytes are needed; Err on a protocol error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if len > MAX_FRAME {
            return Err(format!("frame of {len} bytes is too large").into());
        }
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        let head = self.buf.split_to(8);
        let mut body = self.buf.split_to(len).freeze();
        let flags = head[4];
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                stream,
                fin,
                data: body,
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(format!("unsupported SPDY version {version}").into());
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let need = |n: usize, body: &Bytes| {
            if body.len() < n {
                Err(FrameError(format!("control frame {kind} too short")))
            } else {
                Ok(())
            }
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                need(10, &body)?;
                let stream = body.get_u32() & 0x7fff_ffff;
                let _assoc = body.get_u32();
                let _prio = body.get_u16();
                let headers = self.headers(&body)?;
                Frame::SynStream {
                    stream,
                    fin,
                    headers,
                }
            }
            SYN_REPLY => {
                need(4, &body)?;
                let stream = body.get_u32() & 0x7fff_ffff;
                let headers = self.headers(&body)?;
                Frame::SynReply {
                    stream,
                    fin,
                    headers,
                }
            }
            RST_STREAM => {
                need(8, &body)?;
                Frame::RstStream {
                    stream: body.get_u32() & 0x7fff_ffff,
                    status: body.get_u32(),
                }
            }
            PING => {
                need(4, &body)?;
                Frame::Ping(body.get_u32())
            }
            GOAWAY => {
                need(8, &body)?;
                Frame::GoAway {
                    last: body.get_u32() & 0x7fff_ffff,
                    status: body.get_u32(),
                }
            }
            HEADERS => {
                // Keep the decompressor in step even though the headers are not used.
                need(4, &body)?;
                let _stream = body.get_u32();
                self.headers(&body)?;
                Frame::Ignored(kind)
            }
            SETTINGS | WINDOW_UPDATE => Frame::Ignored(kind),
            other => Frame::Ignored(other),
        }))
    }

    /// Inflates a header block and parses its name/value pairs.
    fn headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let before_in = self.inflate.total_in();
            out.reserve(4096);
            let res = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before_in) as usize;
            input = &input[used..];
            match res {
                Ok(Status::Ok) | Ok(Status::BufError) | Ok(Status::StreamEnd) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        break;
                    }
                    if out.len() > MAX_FRAME {
                        return Err("header block too large".into());
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dict)
                        .map_err(|e| format!("header dictionary: {e}"))?;
                }
                Err(e) => return Err(format!("header block: {e}").into()),
            }
        }
        parse_block(&out)
    }
}

fn parse_block(mut b: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let bad = || FrameError("malformed header block".into());
    if b.len() < 4 {
        return Err(bad());
    }
    let n = b.get_u32() as usize;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let mut pair = [String::new(), String::new()];
        for s in &mut pair {
            if b.len() < 4 {
                return Err(bad());
            }
            let len = b.get_u32() as usize;
            if b.len() < len {
                return Err(bad());
            }
            *s = String::from_utf8_lossy(&b[..len]).into_owned();
            b.advance(len);
        }
        let [k, v] = pair;
        out.push((k, v));
    }
    Ok(out)
}

/// Encodes frames; owns the connection's header compressor.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        let _ = deflate.set_dictionary(&dictionary());
        Encoder { deflate }
    }
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + body.len());
    b.put_u16(0x8000 | VERSION);
    b.put_u16(kind);
    b.put_u32(((flags as u32) << 24) | body.len() as u32);
    b.put_slice(body);
    b.freeze()
}

impl Encoder {
    /// A DATA frame.
    pub fn data(stream: u32, fin: bool, data: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(8 + data.len());
        b.put_u32(stream & 0x7fff_ffff);
        b.put_u32(((if fin { FLAG_FIN } else { 0 } as u32) << 24) | data.len() as u32);
        b.put_slice(data);
        b.freeze()
    }

    /// A SYN_REPLY frame (headers compressed with the session's state).
    pub fn syn_reply(&mut self, stream: u32, fin: bool, headers: &[(&str, &str)]) -> Bytes {
        let block = self.compress(headers);
        let mut body = BytesMut::with_capacity(4 + block.len());
        body.put_u32(stream & 0x7fff_ffff);
        body.put_slice(&block);
        control(SYN_REPLY, if fin { FLAG_FIN } else { 0 }, &body)
    }

    /// A SYN_STREAM (tests play the client with it).
    pub fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)]) -> Bytes {
        let block = self.compress(headers);
        let mut body = BytesMut::with_capacity(10 + block.len());
        body.put_u32(stream & 0x7fff_ffff);
        body.put_u32(0);
        body.put_u16(0);
        body.put_slice(&block);
        control(SYN_STREAM, 0, &body)
    }

    /// A RST_STREAM frame.
    pub fn rst_stream(stream: u32, status: u32) -> Bytes {
        let mut body = BytesMut::with_capacity(8);
        body.put_u32(stream & 0x7fff_ffff);
        body.put_u32(status);
        control(RST_STREAM, 0, &body)
    }

    /// A PING frame.
    pub fn ping(id: u32) -> Bytes {
        control(PING, 0, &id.to_be_bytes())
    }

    fn compress(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.put_u32(headers.len() as u32);
        for (k, v) in headers {
            raw.put_u32(k.len() as u32);
            raw.put_slice(k.as_bytes());
            raw.put_u32(v.len() as u32);
            raw.put_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = raw.as_slice();
        loop {
            let before = self.deflate.total_in();
            out.reserve(256);
            if self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_specified_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    #[test]
    fn frames_round_trip_with_compressed_headers() {
        let mut enc = Encoder::default();
        let mut dec = Decoder::default();
        let h = [("streamtype", "data"), ("port", "8080"), ("requestid", "0")];
        let mut wire = enc.syn_stream(1, &h).to_vec();
        wire.extend_from_slice(&enc.syn_stream(
            3,
            &[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "1"),
            ],
        ));
        wire.extend_from_slice(&Encoder::data(1, true, b"hello"));
        wire.extend_from_slice(&Encoder::ping(7));
        // Bytes arrive in small pieces.
        for chunk in wire.chunks(5) {
            dec.push(chunk);
        }
        let owned = |h: &[(&str, &str)]| {
            h.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            dec.next_frame().unwrap(),
            Some(Frame::SynStream {
                stream: 1,
                fin: false,
                headers: owned(&h)
            })
        );
        match dec.next_frame().unwrap() {
            Some(Frame::SynStream {
                stream: 3, headers, ..
            }) => assert_eq!(headers[0].1, "error"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            dec.next_frame().unwrap(),
            Some(Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::from_static(b"hello")
            })
        );
        assert_eq!(dec.next_frame().unwrap(), Some(Frame::Ping(7)));
        assert_eq!(dec.next_frame().unwrap(), None);
        let reply = enc.syn_reply(1, false, &[]);
        dec.push(&reply);
        assert_eq!(
            dec.next_frame().unwrap(),
            Some(Frame::SynReply {
                stream: 1,
                fin: false,
                headers: vec![]
            })
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut dec = Decoder::default();
        dec.push(&[0x80, 0x02, 0, 1, 0, 0, 0, 0]);
        assert!(dec.next_frame().is_err(), "version 2 refused");
        let mut dec = Decoder::default();
        dec.push(&[
            0x80, 0x03, 0, 1, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
        ]);
        assert!(dec.next_frame().is_err(), "garbage header block");
        let mut dec = Decoder::default();
        dec.push(&[0x80, 0x03, 0, 3, 0, 0, 0, 2, 0, 0]);
        assert!(dec.next_frame().is_err(), "short RST_STREAM");
        let mut dec = Decoder::default();
        dec.push(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff]);
        assert!(dec.next_frame().is_err(), "oversized frame");
    }
}
