//! Policy parsing: a policy file (or the ConfigMap it comes from, or a
//! SIGHUP reload) is operator input that may be wrong in any way. Parsing
//! returns a policy or a `file:line:column` error, never panics; a policy it
//! accepts then judges alerts (globs, selectors, severity overrides) without
//! panicking either.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tokenwatch_agent::detect::policy::{Policy, PolicyError};
use tokenwatch_fuzz::sample_alerts;

fuzz_target!(|text: &str| {
    match Policy::parse(Path::new("policy.yaml"), text) {
        Ok(policy) => {
            for alert in sample_alerts() {
                let _ = policy.judge(&alert);
            }
            let _ = policy.suppression_counts();
        }
        Err(error @ PolicyError::Invalid { .. }) => {
            assert!(error.to_string().starts_with("policy.yaml:"), "error does not name the file: {error}");
        }
        Err(error) => panic!("parsing text gave a read error: {error}"),
    }
});
