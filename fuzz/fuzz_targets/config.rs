//! Configuration file parsing: `config::parse_yaml` (the parsing half of
//! `config::read_file`) and then `Config::resolve`, which checks the values
//! together. Any text gives a configuration or an error naming the file,
//! never a panic: the agent must exit 2 with a message, not abort.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tokenwatch_agent::config::{self, Config, ServiceEnv};

fuzz_target!(|text: &str| {
    match config::parse_yaml(Path::new("config.yaml"), text) {
        Ok(layer) => {
            let env = ServiceEnv { host: Some("10.96.0.1".into()), port: Some("443".into()), ..ServiceEnv::default() };
            let _ = Config::resolve(layer, &env, "node-1").map_err(|error| error.to_string());
        }
        Err(error) => {
            assert!(error.to_string().starts_with("config.yaml:"), "error does not name the file: {error}");
        }
    }
});
