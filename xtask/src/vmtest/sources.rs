//! Which Debian archives to fetch the kernels from: the ones this machine's
//! apt already uses. The house rule is that no mirror host name is written
//! into the code, so the URIs are read from `/etc/apt/sources.list.d/*.sources`
//! (deb822), `*.list` and `/etc/apt/sources.list` (one-line form), and the
//! suites of other releases are fetched from the same archives.

use std::fs;

use anyhow::{bail, Result};

use crate::util::say;

/// The machine's apt sources, in the order apt reads them.
const SOURCE_LIST: &str = "/etc/apt/sources.list";
/// The directory of further sources files.
const SOURCE_PARTS: &str = "/etc/apt/sources.list.d";
/// Where the release's code name (`VERSION_CODENAME`) is, to tell Debian's
/// own archive from third-party ones that also serve a plain suite.
const OS_RELEASE: &str = "/etc/os-release";

/// One archive as a sources line needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// The archive's root URI.
    pub uri: String,
    /// The keyring that signs it, if the source names one as a file.
    pub signed_by: Option<String>,
}

/// The main archive and, if the machine has one, the security archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archives {
    /// Serves the plain suites (`bookworm`): the kernels of each point release.
    pub main: Archive,
    /// Serves `<suite>-security`: the newer kernels between point releases.
    pub security: Option<Archive>,
}

/// One `deb` source: an archive with the suites it is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The archive.
    archive: Archive,
    /// The suites it serves here (`bookworm`, `bookworm-updates`).
    suites: Vec<String>,
}

impl Archives {
    /// The sources file of apt's own state for `suite`: `main` from both.
    pub fn sources_list(&self, suite: &str) -> String {
        let line = |archive: &Archive, suite: &str| match &archive.signed_by {
            Some(keyring) => format!("deb [signed-by={keyring}] {} {suite} main\n", archive.uri),
            None => format!("deb {} {suite} main\n", archive.uri),
        };
        let mut text = line(&self.main, suite);
        if let Some(security) = &self.security {
            text.push_str(&line(security, &format!("{suite}-security")));
        }
        text
    }
}

/// The archives this machine's apt uses, read from its sources files.
pub fn machine_archives() -> Result<Archives> {
    let mut entries = Vec::new();
    if let Ok(text) = fs::read_to_string(SOURCE_LIST) {
        entries.extend(parse_one_line(&text));
    }
    let mut parts: Vec<_> = fs::read_dir(SOURCE_PARTS)
        .map(|dir| dir.filter_map(|entry| Some(entry.ok()?.path())).collect())
        .unwrap_or_default();
    parts.sort();
    for path in parts {
        let Ok(text) = fs::read_to_string(&path) else { continue };
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("sources") => entries.extend(parse_deb822(&text)),
            Some("list") => entries.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    let codename = fs::read_to_string(OS_RELEASE).ok().and_then(|text| codename(&text));
    let archives = pick(&entries, codename.as_deref())?;
    if archives.security.is_none() {
        say("vmtest: the machine's apt sources have no -security suite: kernels come from the point releases only");
    }
    Ok(archives)
}

/// `VERSION_CODENAME` of an os-release file.
fn codename(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("VERSION_CODENAME=")?.trim().trim_matches('"');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// The main archive (the one serving the release's code name, or failing
/// that the first plain suite) and the one serving its `-security` suite.
fn pick(entries: &[Entry], codename: Option<&str>) -> Result<Archives> {
    let plain = |suite: &str| codename.map_or(!suite.contains(['-', '/']), |name| suite == name);
    let Some((main, suite)) =
        entries.iter().find_map(|entry| Some((entry, entry.suites.iter().find(|suite| plain(suite))?)))
    else {
        bail!(
            "no apt source of this machine serves {} ({SOURCE_LIST}, {SOURCE_PARTS}/*.sources): \
             cannot tell which Debian archive to fetch kernels from",
            codename.map_or("a plain suite".to_owned(), |name| format!("the suite {name}"))
        );
    };
    let security_suite = format!("{suite}-security");
    let security =
        entries.iter().find(|entry| entry.suites.contains(&security_suite)).map(|entry| entry.archive.clone());
    Ok(Archives { main: main.archive.clone(), security })
}

/// The `deb` entries of a deb822 sources file: paragraphs of `Key: value`
/// fields (continued on lines starting with a space), comments ignored.
fn parse_deb822(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for paragraph in paragraphs(text) {
        let field = |name: &str| {
            paragraph.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
        };
        let words = |name: &str| field(name).map(|value| value.split_whitespace().collect::<Vec<_>>());
        let is_deb = words("Types").is_some_and(|types| types.contains(&"deb"));
        let enabled = field("Enabled").is_none_or(|value| !value.trim().eq_ignore_ascii_case("no"));
        if !is_deb || !enabled {
            continue;
        }
        // A keyring file; an inline key block (its first line empty) cannot go
        // on a one-line source, so apt's default keyrings are used then.
        let signed_by = field("Signed-By")
            .and_then(|value| value.lines().next())
            .map(str::trim)
            .filter(|path| path.starts_with('/') && !path.contains([' ', ',']))
            .map(str::to_owned);
        let suites: Vec<String> = words("Suites").unwrap_or_default().into_iter().map(str::to_owned).collect();
        for uri in words("URIs").unwrap_or_default() {
            let archive = Archive { uri: uri.to_owned(), signed_by: signed_by.clone() };
            entries.push(Entry { archive, suites: suites.clone() });
        }
    }
    entries
}

/// The paragraphs of a deb822 file as (key, value) pairs, continuation lines
/// appended to the value on lines of their own.
fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut paragraphs = vec![Vec::new()];
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let current: &mut Vec<(String, String)> = paragraphs.last_mut().expect("never empty");
        if line.trim().is_empty() {
            if !current.is_empty() {
                paragraphs.push(Vec::new());
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            current.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    paragraphs.retain(|paragraph| !paragraph.is_empty());
    paragraphs
}

/// The `deb` lines of a one-line sources file:
/// `deb [opt=value ...] uri suite component...`.
fn parse_one_line(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb")?;
            if !rest.starts_with([' ', '\t']) {
                return None; // deb-src
            }
            let rest = rest.trim_start();
            let (options, rest) = match rest.strip_prefix('[') {
                Some(bracketed) => bracketed.split_once(']')?,
                None => ("", rest),
            };
            let signed_by = options
                .split_whitespace()
                .find_map(|option| option.strip_prefix("signed-by="))
                .filter(|path| path.starts_with('/') && !path.contains(','))
                .map(str::to_owned);
            let mut words = rest.split_whitespace();
            let uri = words.next()?.to_owned();
            let suite = words.next()?.to_owned();
            Some(Entry { archive: Archive { uri, signed_by }, suites: vec![suite] })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped as Debian's installer writes it, with placeholder hosts.
    const DEB822: &str = "\
Types: deb
# a comment
URIs: http://archive.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://vendor.example/repo
Suites: nodistro
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 -----END PGP PUBLIC KEY BLOCK-----
";

    #[test]
    fn deb822_main_and_security() {
        let archives = pick(&parse_deb822(DEB822), Some("bookworm")).expect("archives");
        let keyring = Some("/usr/share/keyrings/debian-archive-keyring.gpg".to_owned());
        assert_eq!(archives.main, Archive { uri: "http://archive.example/debian".into(), signed_by: keyring.clone() });
        assert_eq!(
            archives.security,
            Some(Archive { uri: "http://security.example/debian-security".into(), signed_by: keyring })
        );
        assert_eq!(
            archives.sources_list("bullseye"),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://archive.example/debian \
             bullseye main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://security.example/debian-security bullseye-security main\n"
        );
    }

    #[test]
    fn deb822_inline_key_and_disabled_entries() {
        let entries = parse_deb822(DEB822);
        let vendor = entries.iter().find(|entry| entry.suites == ["nodistro"]).expect("the vendor entry");
        assert_eq!(vendor.archive.signed_by, None);
        let disabled = "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm\nEnabled: no\n";
        assert!(parse_deb822(disabled).is_empty());
        let source_only = "Types: deb-src\nURIs: http://a.example/debian\nSuites: bookworm\n";
        assert!(parse_deb822(source_only).is_empty());
    }

    #[test]
    fn one_line_form() {
        let text = "\
# deb http://commented.example/debian bookworm main
deb-src http://archive.example/debian bookworm main
deb [ arch=amd64 signed-by=/etc/apt/keyrings/debian.gpg ] http://archive.example/debian bookworm main contrib
deb http://security.example/debian-security bookworm-security main # trailing
";
        let archives = pick(&parse_one_line(text), Some("bookworm")).expect("archives");
        assert_eq!(archives.main.uri, "http://archive.example/debian");
        assert_eq!(archives.main.signed_by.as_deref(), Some("/etc/apt/keyrings/debian.gpg"));
        let security = archives.security.expect("a security archive");
        assert_eq!(security.uri, "http://security.example/debian-security");
        assert_eq!(security.signed_by, None);
    }

    #[test]
    fn codename_decides_between_plain_suites() {
        let mut entries = parse_deb822(DEB822);
        entries.rotate_left(2); // the vendor's plain suite first
        assert_eq!(pick(&entries, Some("bookworm")).expect("archives").main.uri, "http://archive.example/debian");
        assert_eq!(pick(&entries, None).expect("archives").main.uri, "http://vendor.example/repo");
        assert!(pick(&entries, Some("trixie")).is_err());
        assert_eq!(codename("ID=debian\nVERSION_CODENAME=bookworm\n").as_deref(), Some("bookworm"));
    }
}
