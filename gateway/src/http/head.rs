//! Finding the end of a message head, strictly: every line ends in CRLF, a bare CR or a
//! bare LF anywhere is an error (httparse would accept bare LF), and leading empty lines
//! before a request line are skipped as RFC 9112 §2.2 allows.

use memchr::memchr2;

use super::FramingError;

/// Incremental scanner over a growing buffer; resumes where it stopped.
#[derive(Debug, Default, Clone)]
pub struct HeadScanner {
    pos: usize,
    line_start: usize,
    first_line_end: Option<usize>,
}

/// Result of a scan.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The head ends at this offset (just past the blank line).
    Complete(usize),
    /// More bytes are needed.
    Partial,
}

impl HeadScanner {
    /// Starts a scan at `start` (after skipped empty lines).
    pub fn new(start: usize) -> Self {
        Self {
            pos: start,
            line_start: start,
            first_line_end: None,
        }
    }

    /// Length of the first line, once it is complete.
    pub fn first_line_len(&self, start: usize) -> Option<usize> {
        self.first_line_end.map(|end| end - start)
    }

    /// Scans `buf` from where the last call stopped.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Scan, FramingError> {
        while let Some(offset) = memchr2(b'\r', b'\n', &buf[self.pos..]) {
            let p = self.pos + offset;
            if buf[p] == b'\n' {
                return Err(FramingError::Malformed("bare LF"));
            }
            if p + 1 == buf.len() {
                self.pos = p;
                return Ok(Scan::Partial);
            }
            if buf[p + 1] != b'\n' {
                return Err(FramingError::Malformed("bare CR"));
            }
            if p == self.line_start {
                return Ok(Scan::Complete(p + 2));
            }
            if self.first_line_end.is_none() {
                self.first_line_end = Some(p);
            }
            self.pos = p + 2;
            self.line_start = self.pos;
        }
        self.pos = buf.len();
        Ok(Scan::Partial)
    }
}

/// Number of leading CRLF pairs (empty lines) before a request line; a lone CR at the
/// end is left for more input.
pub fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut n = 0;
    while buf.len() >= n + 2 && &buf[n..n + 2] == b"\r\n" {
        n += 2;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8]) -> Result<Scan, FramingError> {
        HeadScanner::new(0).scan(input)
    }

    #[test]
    fn finds_head_end_and_rejects_bare_line_ends() {
        assert_eq!(
            scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY"),
            Ok(Scan::Complete(27))
        );
        assert_eq!(
            scan_all(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Ok(Scan::Partial)
        );
        assert_eq!(scan_all(b"GET / HTTP/1.1\r\nHost: a\r"), Ok(Scan::Partial));
        assert!(scan_all(b"GET / HTTP/1.1\nHost: a\r\n\r\n").is_err());
        assert!(scan_all(b"GET / HTTP/1.1\r\nHost: a\n\n").is_err());
        assert!(scan_all(b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n").is_err());
    }

    #[test]
    fn resumes_across_arbitrary_splits() {
        let msg = b"GET /x HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n";
        for split in 1..msg.len() {
            let mut scanner = HeadScanner::new(0);
            assert_eq!(
                scanner.scan(&msg[..split]),
                Ok(Scan::Partial),
                "split {split}"
            );
            assert_eq!(
                scanner.scan(msg),
                Ok(Scan::Complete(msg.len())),
                "split {split}"
            );
        }
    }

    #[test]
    fn skips_leading_empty_lines() {
        assert_eq!(leading_empty_lines(b"\r\n\r\nGET"), 4);
        assert_eq!(leading_empty_lines(b"\r"), 0);
    }
}
