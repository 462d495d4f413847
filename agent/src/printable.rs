//! Text from the node, made safe to print. A process's `comm`, its
//! executable's path and arguments, a pod's paths: their authors choose
//! them, and any of them may hold a line end, a terminal escape or a
//! bidirectional override. Printed raw, such text forges a log line, an
//! alert line, or a YAML document the operator then applies. Every place
//! that prints node text into a line-oriented or YAML output passes it
//! through [`printable`]; the agent's log writer ([`LogWriter`]) escapes
//! what the log formatter leaves raw.

use std::{borrow::Cow, fmt::Write as _, io};

/// `text` with every control character (C0, DEL, C1), Unicode line and
/// paragraph separator and bidirectional control written as an escape
/// (`\n`, `\t`, `\u{202e}`), and backslashes doubled so an escape cannot
/// be forged either; borrowed when there is nothing to escape.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `c` cannot be printed as it is.
fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The agent's log output: each log record is one line. The formatter
/// already escapes terminal escapes inside fields; this writes the line
/// ends and other C0 controls a field holds (a path with a newline from a
/// pod spec) as escapes, so no field can forge a log line. The record's
/// own final newline, and the escape character the formatter colours
/// with on a terminal, pass through.
pub struct LogWriter<W> {
    inner: W,
}

impl<W> LogWriter<W> {
    /// Writes records to `inner`.
    pub fn new(inner: W) -> Self {
        LogWriter { inner }
    }
}

impl<W: io::Write> io::Write for LogWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        if !body.iter().any(|b| is_raw_control(*b)) {
            self.inner.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        for byte in body {
            match *byte {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b if is_raw_control(b) => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                b => out.push(b),
            }
        }
        out.extend_from_slice(&buf[body.len()..]);
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A C0 control byte other than the escape the formatter colours with.
fn is_raw_control(byte: u8) -> bool {
    byte < 0x20 && byte != 0x1b
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn line_ends_escapes_and_overrides_are_written_as_escapes() {
        assert_eq!(printable("/usr/bin/curl"), Cow::Borrowed("/usr/bin/curl"));
        assert_eq!(printable("a\n---\nkind: Secret"), "a\\n---\\nkind: Secret");
        assert_eq!(printable("x\r\x1b[31m\u{202e}"), "x\\r\\u{1b}[31m\\u{202e}");
        assert_eq!(printable("tab\there\u{85}"), "tab\\there\\u{85}");
        // An escape already in the text cannot pass as one the agent wrote.
        assert_eq!(printable("a\\nb"), "a\\\\nb");
        assert_eq!(printable("名前"), "名前");
    }

    #[test]
    fn a_log_record_stays_one_line() {
        let mut out = Vec::new();
        let mut writer = LogWriter::new(&mut out);
        writer.write_all(b"INFO path=/etc\nINFO forged line\ttab\n").expect("write");
        writer.write_all(b"\x1b[32mINFO\x1b[0m plain\n").expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "INFO path=/etc\\nINFO forged line\\ttab\n\x1b[32mINFO\x1b[0m plain\n"
        );
    }
}
