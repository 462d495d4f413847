//! The Prometheus text exposition format (version 0.0.4), written by every
//! part of the agent that exposes figures: the metrics module renders its
//! own counters and calls each registered source with the same writer.

use std::fmt::Display;

/// The text of a scrape being written.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// An empty text.
    pub fn new() -> Self {
        Exposition(String::with_capacity(4096))
    }

    /// `# HELP` and `# TYPE` lines of a family (`kind`: counter or gauge).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        for part in ["# HELP ", name, " ", help, "\n# TYPE ", name, " ", kind, "\n"] {
            self.0.push_str(part);
        }
    }

    /// One sample line, label values escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(key);
                self.0.push_str("=\"");
                escape_into(&mut self.0, value);
                self.0.push('"');
            }
            self.0.push('}');
        }
        self.0.push(' ');
        self.0.push_str(&value.to_string());
        self.0.push('\n');
    }

    /// Text already in the format (a source's cached part).
    pub fn push_str(&mut self, text: &str) {
        self.0.push_str(text);
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The whole text.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// A label value as the format wants it: backslash, quote and newline
/// escaped, written straight into `out`.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::new();
        out.sample("m", &[("l", "a\"b\\c\nd")], 1);
        assert_eq!(out.into_string(), "m{l=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn a_family_declares_its_help_and_type() {
        let mut out = Exposition::new();
        out.family("m_total", "counter", "What it counts.");
        out.sample("m_total", &[], 3);
        assert_eq!(out.as_str(), "# HELP m_total What it counts.\n# TYPE m_total counter\nm_total 3\n");
    }
}
