//! The byte formats of the embedded store: log records and a checked cursor to read them.
//! Integers are little-endian and fixed-width; byte strings are length-prefixed.

use bytes::{BufMut, Bytes};

use crate::Revision;

/// One durable change, as written to the log and replayed at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Put {
        rev: Revision,
        key: Bytes,
        value: Bytes,
        create_rev: Revision,
        version: i64,
        expires: u64,
    },
    Delete {
        rev: Revision,
        key: Bytes,
    },
    Compact {
        rev: Revision,
    },
}

const PUT: u8 = 1;
const DELETE: u8 = 2;
const COMPACT: u8 = 3;

impl Record {
    /// Appends the encoding of the record to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Record::Put {
                rev,
                key,
                value,
                create_rev,
                version,
                expires,
            } => {
                buf.put_u8(PUT);
                buf.put_i64_le(*rev);
                buf.put_i64_le(*create_rev);
                buf.put_i64_le(*version);
                buf.put_u64_le(*expires);
                put_bytes(buf, key);
                put_bytes(buf, value);
            }
            Record::Delete { rev, key } => {
                buf.put_u8(DELETE);
                buf.put_i64_le(*rev);
                put_bytes(buf, key);
            }
            Record::Compact { rev } => {
                buf.put_u8(COMPACT);
                buf.put_i64_le(*rev);
            }
        }
    }

    /// Reads one record.
    pub fn decode(c: &mut Cursor<'_>) -> Result<Record, String> {
        Ok(match c.u8()? {
            PUT => {
                let rev = c.i64()?;
                let create_rev = c.i64()?;
                let version = c.i64()?;
                let expires = c.u64()?;
                let key = c.bytes()?;
                let value = c.bytes()?;
                Record::Put {
                    rev,
                    key,
                    value,
                    create_rev,
                    version,
                    expires,
                }
            }
            DELETE => Record::Delete {
                rev: c.i64()?,
                key: c.bytes()?,
            },
            COMPACT => Record::Compact { rev: c.i64()? },
            t => return Err(format!("unknown record type {t}")),
        })
    }
}

/// Appends a u32 length and the bytes.
pub(crate) fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.put_u32_le(b.len() as u32);
    buf.put_slice(b);
}

/// Reads fixed-width fields from a byte slice, failing (never panicking) when it runs short.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("truncated at byte {} (need {n} more)", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub fn bytes(&mut self) -> Result<Bytes, String> {
        let n = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncation_is_an_error() {
        let recs = vec![
            Record::Put {
                rev: 7,
                key: Bytes::from_static(b"/k"),
                value: Bytes::from_static(b"v"),
                create_rev: 3,
                version: 2,
                expires: 99,
            },
            Record::Delete {
                rev: 8,
                key: Bytes::from_static(b"/k"),
            },
            Record::Compact { rev: 5 },
        ];
        let mut buf = Vec::new();
        recs.iter().for_each(|r| r.encode(&mut buf));
        let mut c = Cursor::new(&buf);
        let mut back = Vec::new();
        while !c.is_empty() {
            back.push(Record::decode(&mut c).unwrap());
        }
        assert_eq!(back, recs);
        let mut boundaries = vec![0];
        for r in &recs {
            let mut one = Vec::new();
            r.encode(&mut one);
            boundaries.push(boundaries.last().unwrap() + one.len());
        }
        for cut in 1..buf.len() {
            let mut c = Cursor::new(&buf[..cut]);
            let all: Result<Vec<_>, _> =
                std::iter::from_fn(|| (!c.is_empty()).then(|| Record::decode(&mut c))).collect();
            assert_eq!(all.is_ok(), boundaries.contains(&cut), "cut at {cut}");
        }
    }
}
