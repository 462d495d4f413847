//! Field and label selectors, matched against objects' JSON as the real
//! server matches them (a missing field or label is the empty string / absent).

use serde_json::Value;

use super::Resource;

/// The fields each kind accepts in a `fieldSelector` (kube-apiserver answers 400 for others).
fn selectable_fields(resource: Resource) -> &'static [&'static str] {
    match resource {
        Resource::Pods => &["spec.nodeName", "metadata.name", "metadata.namespace"],
        Resource::Services => &["metadata.name", "metadata.namespace", "spec.clusterIP", "spec.type"],
        Resource::EndpointSlices => &["metadata.name", "metadata.namespace"],
        Resource::Nodes => &["metadata.name"],
    }
}

/// One parsed `labelSelector` term.
#[derive(Debug)]
enum LabelTerm {
    Equal(String, String),
    /// Matches when the label is absent too, as on a real server.
    NotEqual(String, String),
    Exists(String),
    NotExists(String),
}

/// A request's `fieldSelector` and `labelSelector`, plus the namespace of a namespaced path.
#[derive(Debug)]
pub(super) struct Selector {
    /// `(field path, equal?, value)`.
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelTerm>,
}

impl Selector {
    /// Parses both selectors for `resource`; `Err` is the 400 message.
    pub(super) fn parse(
        resource: Resource,
        field_selector: &str,
        label_selector: &str,
        namespace: Option<&str>,
    ) -> Result<Selector, String> {
        let mut fields = Vec::new();
        for term in field_selector.split(',').filter(|t| !t.is_empty()) {
            let (field, equal, value) = match term.split_once("!=") {
                Some((f, v)) => (f, false, v),
                None => match term.split_once("==").or_else(|| term.split_once('=')) {
                    Some((f, v)) => (f, true, v),
                    None => return Err(format!("invalid field selector term {term:?}")),
                },
            };
            if !selectable_fields(resource).contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            fields.push((field.to_string(), equal, value.to_string()));
        }
        if let Some(ns) = namespace {
            fields.push(("metadata.namespace".to_string(), true, ns.to_string()));
        }
        let labels =
            label_selector.split(',').filter(|t| !t.is_empty()).map(LabelTerm::parse).collect::<Result<_, _>>()?;
        Ok(Selector { fields, labels })
    }

    /// Whether `object` is selected.
    pub(super) fn matches(&self, object: &Value) -> bool {
        let fields_match = self.fields.iter().all(|(path, equal, value)| {
            let actual = path.split('.').fold(object, |value, step| &value[step]);
            (actual.as_str().unwrap_or_default() == value) == *equal
        });
        let labels = &object["metadata"]["labels"];
        fields_match && self.labels.iter().all(|term| term.matches(labels))
    }
}

impl LabelTerm {
    /// `key=value`, `key==value`, `key!=value`, `key`, `!key`; set-based terms (`in`, `notin`) are refused.
    fn parse(term: &str) -> Result<LabelTerm, String> {
        let term = term.trim();
        let (key, value, parsed) = if let Some((key, value)) = term.split_once("!=") {
            (key, Some(value), LabelTerm::NotEqual(key.into(), value.into()))
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (key, Some(value), LabelTerm::Equal(key.into(), value.into()))
        } else if let Some(key) = term.strip_prefix('!') {
            (key, None, LabelTerm::NotExists(key.into()))
        } else {
            (term, None, LabelTerm::Exists(term.into()))
        };
        let odd = |part: &str| part.contains(['=', '!', '(', ')', ' ']);
        if key.is_empty() || odd(key) || value.is_some_and(odd) {
            return Err(format!("label selector term {term:?} is not supported by the fake API server"));
        }
        Ok(parsed)
    }

    fn matches(&self, labels: &Value) -> bool {
        match self {
            LabelTerm::Equal(key, value) => labels[key].as_str() == Some(value),
            LabelTerm::NotEqual(key, value) => labels[key].as_str() != Some(value),
            LabelTerm::Exists(key) => labels.get(key).is_some(),
            LabelTerm::NotExists(key) => labels.get(key).is_none(),
        }
    }
}
