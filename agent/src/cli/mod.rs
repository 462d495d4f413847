//! The command line: `tokenwatch agent` and its flags. Every flag has an
//! environment variable, and the YAML file (`--config`) uses the flag names.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod advise;
pub mod alerts;
pub mod connect;
pub mod inventory;
pub mod kernel_check;
pub mod prometheus;

use crate::config::ConfigLayer;

/// tokenwatch: who is using your Kubernetes ServiceAccount tokens.
#[derive(Debug, Parser)]
#[command(name = "tokenwatch", version, about, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once at start; boxing would only complicate the match")]
pub enum Command {
    /// Run the node agent: watch token reads and API-server connections.
    Agent(AgentArgs),
    /// Read the agent's alert stream (gRPC), like `kubectl logs -f`.
    Alerts(alerts::AlertsArgs),
    /// Show which workloads have a token, read it, dial the API server
    /// (one or more agents, merged).
    Inventory(inventory::InventoryArgs),
    /// Turn the inventory into hardening advice: YAML to apply.
    Advise(advise::AdviseArgs),
    /// Verify every eBPF program against this kernel, attach nothing, and
    /// say which hooks the agent would run with (needs root).
    KernelCheck(kernel_check::KernelCheckArgs),
}

/// Flags of `tokenwatch agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// YAML file with defaults for these flags (keys are the flag names).
    #[arg(long, env = "TOKENWATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The settings (each also a key of the file).
    #[command(flatten)]
    pub settings: ConfigLayer,

    /// Log filter for stderr, e.g. `info` or `info,tokenwatch_ebpf=debug`
    /// (the latter turns on the eBPF programs' own diagnostics).
    #[arg(long, env = "TOKENWATCH_LOG", default_value = "info")]
    pub log: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StdoutFormat;

    fn parse(args: &[&str]) -> Result<AgentArgs, clap::Error> {
        let cli = Cli::try_parse_from([&["tokenwatch", "agent"], args].concat())?;
        match cli.command {
            Command::Agent(agent) => Ok(agent),
            _ => panic!("parsed as another command"),
        }
    }

    #[test]
    fn flags_become_a_layer() {
        let args =
            parse(&["--standalone", "--api-server", "[::1]:6443", "--api-server", "10.0.0.1", "--stdout", "text"])
                .expect("valid");
        let layer = args.settings;
        assert!(layer.standalone);
        let servers: Vec<String> = layer.api_servers.expect("given").iter().map(ToString::to_string).collect();
        assert_eq!(servers, ["[::1]:6443", "10.0.0.1:443"]);
        assert_eq!(layer.stdout, Some(StdoutFormat::Text));
        assert_eq!(layer.token_paths, None);
    }

    #[test]
    fn a_setting_comes_from_the_first_layer_that_names_it_and_a_switch_from_any() {
        let flags = parse(&["--node-name", "from-flag", "--metrics-inventory"]).expect("valid").settings;
        let file = ConfigLayer {
            node_name: Some("from-file".to_owned()),
            spool_max_mib: Some(9),
            standalone: true,
            ..ConfigLayer::default()
        };
        let merged = flags.over(file);
        assert_eq!(merged.node_name.as_deref(), Some("from-flag"), "the flag wins");
        assert_eq!(merged.spool_max_mib, Some(9), "the file fills what the flags leave");
        assert!(merged.standalone && merged.metrics_inventory, "a switch is on when any layer turns it on");
    }

    #[test]
    fn every_setting_is_a_flag_and_a_key_of_the_file() {
        let command = <Cli as clap::CommandFactory>::command();
        let agent = command.find_subcommand("agent").expect("the agent subcommand");
        for arg in agent.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "config" | "log" | "help")) {
            let flag = arg.get_long().expect("a long flag");
            // The file's key is the flag's name, but lists are named in the plural.
            let key = match flag {
                "token-path" => "token-paths".to_owned(),
                "api-server" => "api-servers".to_owned(),
                other => other.to_owned(),
            };
            let value = if arg.get_action().takes_values() { "x" } else { "true" };
            let text = format!("{key}: {value}\n");
            let parsed = yaml_serde::from_str::<ConfigLayer>(&text);
            let unknown = parsed.as_ref().err().is_some_and(|e| e.to_string().contains("unknown field"));
            assert!(!unknown, "--{flag} has no key `{key}` in the file: {parsed:?}");
            assert!(arg.get_env().is_some(), "--{flag} has no environment variable");
        }
    }

    #[test]
    fn a_bad_address_names_the_flag_and_the_value() {
        let error = parse(&["--api-server", "kubernetes:443"]).expect_err("not an IP");
        let text = error.to_string();
        assert!(text.contains("--api-server"), "{text}");
        assert!(text.contains("`kubernetes` is not an IP address"), "{text}");
    }
}
