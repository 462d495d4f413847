//! Secrets out of command lines, before anything else sees them. The
//! process that reads a token is often the one about to use it
//! (`curl -H "Authorization: Bearer $(cat token)"`, `kubectl --token=...`),
//! and its arguments travel in every alert: to stdout (the agent's
//! container log), the spool, the gRPC stream and OTLP. So the command
//! line is cleaned where it is read from `/proc`, and what was taken out
//! or cut is marked in its place.
//!
//! What is taken out: JWT-shaped strings anywhere; the word after an
//! authorization scheme (`Bearer`, `Basic`, `Token`) or an
//! `Authorization:` header; the value of any `key=value` or
//! `key: value` whose key names a secret (`token`, `password`, `secret`,
//! `apikey`, `credential`..., also inside URLs' queries); the argument
//! after a flag that names one (`--token VALUE`); and a URL's password
//! (`scheme://user:password@host`). Paths are kept: which file a process
//! names is what the alert is for.

/// What stands where a secret was.
pub const REDACTED: &str = "[REDACTED]";
/// The most bytes of one argument kept.
pub const MAX_ARG_BYTES: usize = 1024;
/// The most bytes of all arguments kept; the rest are counted, not kept.
pub const MAX_ARGS_BYTES: usize = 4096;
/// The most of `/proc/<pid>/cmdline` read: far past what is kept, so a
/// secret is redacted before any cut, never split by one.
pub const MAX_CMDLINE_READ: usize = 64 * 1024;

/// Key suffixes that name a secret (compared in lower case, `_` as `-`).
const SECRET_KEYS: [&str; 17] = [
    "token",
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "secret-key",
    "access-key",
    "apikey",
    "api-key",
    "credential",
    "credentials",
    "private-key",
    "signature",
    "cookie",
    "bearer",
    "-pass",
];
/// Keys that name a secret only when they are the whole key (as a suffix
/// they end ordinary words: `bypass`, `oauth`).
const SECRET_WHOLE_KEYS: [&str; 5] = ["pass", "auth", "passin", "passout", "sig"];
/// Flags whose value is `user:password` (curl's `-u`, `--proxy-user`).
const USER_PASSWORD_FLAGS: [&str; 4] = ["-u", "--user", "--proxy-user", "-U"];
/// Authorization schemes: in an `Authorization` header, the word after
/// one is the credential and the scheme itself is kept.
const SCHEMES: [&str; 5] = ["bearer", "basic", "token", "negotiate", "digest"];
/// Where the token volumes' files are: a value naming one is a path, not
/// a credential (`--token=/var/run/secrets/tokens/vault-token`).
const TOKEN_DIRS: [&str; 2] = ["/var/run/secrets/", "/run/secrets/"];

/// The command line `raw` (arguments as read), with secrets replaced by
/// [`REDACTED`], each argument cut to [`MAX_ARG_BYTES`] and the list to
/// [`MAX_ARGS_BYTES`], each cut marked with how much it removed.
pub fn command_line(raw: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(raw.len().min(64));
    let mut total = 0;
    let mut next = Next::Plain;
    let count = raw.len();
    for (index, arg) in raw.into_iter().enumerate() {
        let cleaned = match next {
            Next::Secret => REDACTED.to_owned(),
            Next::UserPassword => redact_user_password(&arg),
            Next::Plain => redact(&arg),
        };
        next = next_after(&arg);
        let cleaned = cut(cleaned, MAX_ARG_BYTES);
        if total + cleaned.len() > MAX_ARGS_BYTES {
            out.push(format!("[+{} args cut]", count - index));
            break;
        }
        total += cleaned.len();
        out.push(cleaned);
    }
    out
}

/// What the argument after a flag is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// An argument like any other.
    Plain,
    /// A secret as a whole (`--token VALUE`).
    Secret,
    /// `user:password` (`curl -u`).
    UserPassword,
}

/// What the argument after `word` is.
fn next_after(word: &str) -> Next {
    if USER_PASSWORD_FLAGS.contains(&word) {
        Next::UserPassword
    } else if word.starts_with('-') && !word.contains('=') && is_secret_key(word.trim_start_matches('-')) {
        Next::Secret
    } else {
        Next::Plain
    }
}

/// `user:password` with the password replaced (the user kept).
fn redact_user_password(arg: &str) -> String {
    match arg.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => redact(arg),
    }
}

/// `arg` with every secret inside it replaced.
pub fn redact(arg: &str) -> String {
    let mut text = redact_jwts(arg);
    text = redact_after_schemes(&text);
    text = redact_key_values(&text);
    text = redact_inner_flags(&text);
    redact_url_userinfo(&text)
}

/// Whether `key` (a flag, variable or parameter name) names a secret.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('_', "-");
    SECRET_KEYS.iter().any(|word| key.ends_with(word)) || SECRET_WHOLE_KEYS.contains(&key.as_str())
}

/// Characters a value may hold: anything but blanks and quotes (a value
/// ends at the argument's next word).
fn is_value_char(c: char) -> bool {
    !(c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
}

/// As [`is_value_char`], in a URL's query or a header list, where `&`, `;`
/// and `,` separate values.
fn is_listed_value_char(c: char) -> bool {
    is_value_char(c) && !matches!(c, '&' | ';' | ',' | '#' | ')' | '}' | ']' | '>')
}

fn is_base64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Replaces each `eyJ<b64>.<b64>[.<b64>]` (a JWT: its header always
/// begins `{"`, base64url `eyJ`).
fn redact_jwts(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut start = 0;
    let mut at = 0;
    while let Some(found) = text[at..].find("eyJ") {
        let begin = at + found;
        let mut end = begin;
        let mut dots = 0;
        while end < bytes.len() && (is_base64url(bytes[end]) || (bytes[end] == b'.' && dots < 2)) {
            dots += usize::from(bytes[end] == b'.');
            end += 1;
        }
        let preceded_by_base64 = begin > 0 && is_base64url(bytes[begin - 1]);
        if dots >= 1 && end - begin >= 16 && !preceded_by_base64 {
            out.push_str(&text[start..begin]);
            out.push_str(REDACTED);
            start = end;
        }
        at = end.max(begin + 3);
    }
    out.push_str(&text[start..]);
    out
}

/// Replaces the word after `Bearer` (any case, anywhere: it names
/// nothing else) and the credential of an `Authorization` header or
/// parameter (`Authorization: Basic <x>`, `authorization=<x>`): all of
/// it to the end of the header, keeping the scheme only when it is a
/// known one. Other schemes' names are words too common to act on alone
/// (`kubectl create token <name>`).
fn redact_after_schemes(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut ranges = Vec::new();
    for (begin, _) in lower.match_indices("bearer") {
        let after = begin + "bearer".len();
        let word_start = begin == 0 || !lower.as_bytes()[begin - 1].is_ascii_alphanumeric();
        if word_start && lower.as_bytes().get(after).is_some_and(|b| *b == b' ' || *b == b'\t') {
            ranges.push(value_range(text, after, is_value_char));
        }
    }
    for (begin, key) in lower.match_indices("authorization") {
        let after = begin + key.len();
        if !matches!(lower.as_bytes().get(after), Some(b':' | b'=')) {
            continue;
        }
        let first = value_range(text, after + 1, is_value_char);
        let start = if SCHEMES.contains(&&lower[first.0..first.1]) { first.1 } else { first.0 };
        let end = text[start..].find(['"', '\'', '`']).map_or(text.len(), |len| start + len);
        let start = start + text[start..end].len() - text[start..end].trim_start().len();
        ranges.push((start, end));
    }
    replace_ranges(text, ranges)
}

/// Replaces the value of each `key=value` and `key: value` whose key
/// names a secret (`--token=`, `TOKEN=`, `?access_token=`, `password:`,
/// `"password":"x"`), quoted or not.
fn redact_key_values(text: &str) -> String {
    let mut ranges = Vec::new();
    for (index, separator) in text.char_indices().filter(|(_, c)| matches!(c, '=' | ':')) {
        // A JSON or quoted key: `"password":`.
        let key_end = match text[..index].chars().next_back() {
            Some(quote @ ('"' | '\'')) => index - quote.len_utf8(),
            _ => index,
        };
        let key_start = text[..key_end]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .last()
            .map_or(key_end, |(at, _)| at);
        let key = &text[key_start..key_end];
        if key.is_empty() || !is_secret_key(key.trim_start_matches('-')) {
            continue;
        }
        let in_list = text[..key_start].ends_with(['?', '&', ';']);
        let value =
            value_range(text, index + separator.len_utf8(), if in_list { is_listed_value_char } else { is_value_char });
        let named_path = TOKEN_DIRS.iter().any(|dir| text[value.0..value.1].starts_with(dir));
        // `token:` followed by nothing is a label, not a value.
        if value.1 > value.0 && !named_path {
            ranges.push(value);
        }
    }
    replace_ranges(text, ranges)
}

/// Replaces the word after a secret flag inside one argument
/// (`sh -c "kubectl --token abc get pods"`).
fn redact_inner_flags(text: &str) -> String {
    let mut ranges = Vec::new();
    let mut words = text.split(' ').scan(0, |at, word| {
        let start = *at;
        *at += word.len() + 1;
        Some((start, word))
    });
    let Some(mut previous) = words.next() else { return text.to_owned() };
    for (start, word) in words {
        let next = next_after(previous.1.trim_start_matches(['"', '\'']));
        if next == Next::Secret && !word.is_empty() && word != REDACTED {
            let end = start + word.trim_end_matches(['"', '\'']).len();
            ranges.push((start, end));
        } else if next == Next::UserPassword {
            if let Some(colon) = word.find(':') {
                ranges.push((start + colon + 1, start + word.trim_end_matches(['"', '\'']).len()));
            }
        }
        previous = (start, word);
    }
    replace_ranges(text, ranges)
}

/// Replaces the password of `scheme://user:password@host`, and a long
/// user alone (`https://<token>@github.com`: a token as the user name).
fn redact_url_userinfo(text: &str) -> String {
    let mut ranges = Vec::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("://") {
        let authority_start = at + found + 3;
        let authority_end = text[authority_start..]
            .find(|c: char| c == '/' || c == '?' || c == '#' || !is_value_char(c))
            .map_or(text.len(), |end| authority_start + end);
        let authority = &text[authority_start..authority_end];
        if let Some(at_sign) = authority.rfind('@') {
            match authority[..at_sign].find(':') {
                Some(colon) => ranges.push((authority_start + colon + 1, authority_start + at_sign)),
                None if at_sign >= 16 => ranges.push((authority_start, authority_start + at_sign)),
                None => {}
            }
        }
        at = authority_end.max(authority_start);
    }
    replace_ranges(text, ranges)
}

/// The byte range of the value starting at `from` (after any blanks):
/// inside its quotes when it is quoted, else up to the first character
/// `belongs` refuses.
fn value_range(text: &str, from: usize, belongs: fn(char) -> bool) -> (usize, usize) {
    let start = text[from..].find(|c: char| c != ' ' && c != '\t').map_or(text.len(), |skip| from + skip);
    if let Some(quote @ ('"' | '\'')) = text[start..].chars().next() {
        let inner = start + 1;
        let end = text[inner..].find(quote).map_or(text.len(), |len| inner + len);
        return (inner, end);
    }
    let end = text[start..].find(|c: char| !belongs(c)).map_or(text.len(), |len| start + len);
    (start, end)
}

/// `text` with each non-empty range replaced by [`REDACTED`]; ranges that
/// overlap an earlier one are merged into it.
fn replace_ranges(text: &str, mut ranges: Vec<(usize, usize)>) -> String {
    ranges.retain(|(start, end)| end > start);
    if ranges.is_empty() {
        return text.to_owned();
    }
    ranges.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut kept_to = 0;
    for (start, end) in ranges {
        if end <= kept_to {
            continue;
        }
        if start >= kept_to {
            out.push_str(&text[kept_to..start]);
            out.push_str(REDACTED);
        }
        kept_to = end;
    }
    out.push_str(&text[kept_to..]);
    out
}

/// `text` cut to at most `max` bytes (at a character boundary), with
/// `…[+N bytes]` saying how much went.
fn cut(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[+{} bytes]", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests;
