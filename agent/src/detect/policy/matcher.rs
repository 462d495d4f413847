//! What an exception matches, and the small glob its `images` and
//! `binaries` use.
//!
//! Every matcher errs on the side of alerting: a field the agent could not
//! learn (empty namespace, ServiceAccount, image or executable) never
//! matches, so an alert about a process that could not be identified is
//! never silenced by an exception meant for a known one.

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobMatcher};
use tokenwatch_proto::v1::{Alert, KubernetesContext, ProcessOrigin};

/// A shell-like pattern, compiled by globset: `*` matches any run of
/// characters except `/`, `?` one character except `/`, `[abc]`, `[a-z]`
/// and `[!a]` one character of (or not of) a class, `{a,b}` either
/// alternative, and `\` makes the next character itself. `*` stops at `/`
/// (as in Go's `path.Match`) so that `/app/*` cannot be satisfied by a
/// binary an attacker drops into a writable `/app/tmp/`; the pattern always
/// has to match the whole value. `**` is refused rather than given its
/// globset meaning (any number of directories): a block resolves its
/// binaries directory by directory inside each container, and a recursive
/// walk of a container's file system per round is not a cost to hide in a
/// pattern. For the same reason a class or an alternation may not span `/`.
#[derive(Clone, Debug)]
pub struct Glob {
    pattern: String,
    matcher: GlobMatcher,
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for Glob {}

impl Glob {
    /// Compiles `pattern`, or says what is wrong with it.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.contains("**") {
            return Err(format!(
                "`{pattern}`: `**` is not supported (`*` matches within one path segment); list the directories"
            ));
        }
        let matcher = compile(pattern)?;
        // Each segment must stand alone, as a block's walk takes it.
        for segment in pattern.split('/') {
            if compile(segment).is_err() {
                return Err(format!("`{pattern}`: a `[...]` class or `{{...}}` alternation may not span `/`"));
            }
        }
        Ok(Glob { pattern: pattern.to_owned(), matcher })
    }

    /// Whether `pattern` (a whole pattern or one segment) has no special
    /// character, so it names exactly the text written.
    pub fn is_literal(pattern: &str) -> bool {
        !pattern.contains(['*', '?', '[', '{', '\\'])
    }

    /// The pattern as written, for messages.
    pub fn as_string(&self) -> String {
        self.pattern.clone()
    }

    /// Does the whole of `text` match? An empty `text` never does (see the
    /// module docs).
    pub fn matches(&self, text: &str) -> bool {
        !text.is_empty() && self.matcher.is_match(text)
    }
}

/// globset's glob with `*` and `?` kept inside a segment and `\` escaping.
fn compile(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|error| format!("`{pattern}` is not a valid pattern: {}", error.kind()))
}

/// The match fields of one exception, already checked. `None` means the
/// field was not given and matches anything; a given field must match
/// (AND across fields), and within a list any entry may match (OR).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matcher {
    /// Rule ids this exception silences; `None` for all rules.
    pub rules: Option<Vec<String>>,
    /// `kubernetes.namespace`, exactly.
    pub namespaces: Option<Vec<String>>,
    /// `kubernetes.service_account`, exactly.
    pub service_accounts: Option<Vec<String>>,
    /// `kubernetes.labels` must hold every pair (a `matchLabels`).
    pub pod_selector: Option<BTreeMap<String, String>>,
    /// Globs on `kubernetes.image`.
    pub images: Option<Vec<Glob>>,
    /// Globs on `process.exe`. An empty exe (the process exited before the
    /// agent looked) never matches: such a process cannot be excepted by
    /// binary, which is the safe side.
    pub binaries: Option<Vec<Glob>>,
    /// `true`: only processes exec'd into the container (origin `EXEC`);
    /// `false`: only processes known not to be (`ENTRYPOINT`, `HOST`). An
    /// unknown origin matches neither.
    pub exec: Option<bool>,
}

impl Matcher {
    /// Does this exception name anything to match on besides `rules`? One
    /// that does not would silence every alert of its rules.
    pub fn has_match_fields(&self) -> bool {
        self.namespaces.is_some()
            || self.service_accounts.is_some()
            || self.pod_selector.is_some()
            || self.images.is_some()
            || self.binaries.is_some()
            || self.exec.is_some()
    }

    /// Does a pod's container satisfy the pod-level fields (namespace,
    /// ServiceAccount, labels, image)? `rules`, `binaries` and `exec` are
    /// left out: they are per process (for blocks, judged in the kernel).
    /// Runs [`Matcher::matches`] itself on an alert holding only the
    /// container, so "which pods" means exactly the same for exceptions and
    /// for blocks, unknown values included (they never match).
    pub fn matches_pod(&self, kubernetes: &KubernetesContext) -> bool {
        let pod_level = Matcher { rules: None, binaries: None, exec: None, ..self.clone() };
        pod_level.matches(&Alert { kubernetes: Some(kubernetes.clone()), ..Alert::default() })
    }

    /// Does `alert` satisfy every given field?
    pub fn matches(&self, alert: &Alert) -> bool {
        let kubernetes = alert.kubernetes.as_ref();
        let process = alert.process.as_ref();
        let namespace = kubernetes.map_or("", |k| k.namespace.as_str());
        let service_account = kubernetes.map_or("", |k| k.service_account.as_str());
        let image = kubernetes.map_or("", |k| k.image.as_str());
        let exe = process.map_or("", |p| p.exe.as_str());
        let origin = process.map_or(ProcessOrigin::Unspecified, |p| {
            ProcessOrigin::try_from(p.origin).unwrap_or(ProcessOrigin::Unspecified)
        });
        all_given(&self.rules, |rules| rules.contains(&alert.rule))
            && all_given(&self.namespaces, |names| any_exact(names, namespace))
            && all_given(&self.service_accounts, |names| any_exact(names, service_account))
            && all_given(&self.pod_selector, |selector| {
                selector.iter().all(|(key, value)| kubernetes.and_then(|k| k.labels.get(key)) == Some(value))
            })
            && all_given(&self.images, |globs| globs.iter().any(|g| g.matches(image)))
            && all_given(&self.binaries, |globs| globs.iter().any(|g| g.matches(exe)))
            && all_given(&self.exec, |&exec| match origin {
                ProcessOrigin::Exec => exec,
                ProcessOrigin::Entrypoint | ProcessOrigin::Host => !exec,
                ProcessOrigin::Unspecified => false,
            })
    }
}

/// A field that was not given matches; a given one must pass `check`.
fn all_given<T>(field: &Option<T>, check: impl FnOnce(&T) -> bool) -> bool {
    field.as_ref().is_none_or(check)
}

/// Exact comparison; an empty (unknown) value matches nothing.
fn any_exact(names: &[String], value: &str) -> bool {
    !value.is_empty() && names.iter().any(|n| n == value)
}
